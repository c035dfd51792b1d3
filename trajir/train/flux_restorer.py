"""The FLUX-IR restorer for training: a trainable XLabs ControlNet on a frozen FLUX (MATH.md §9.2).

States are FLUX latents in model space. ``encode`` gives the GT latent ``E(x_gt)`` (x0), the LQ latent
``E_LQ(y)``, which anchors the LQ-interpolated start of Eq. (17) and negative LQ guidance of Eq. (19)–(20), and
the conditioning: the LQ image as the ControlNet hint (0..1, pixel size), the prompt embeddings (T5 tokens,
pooled CLIP-L) and the distilled guidance. ``predict`` runs the ControlNet, scales its residuals by
``flux.controlnet_scale`` and lets the frozen base add them after its double blocks; the base returns the
velocity. ``decode`` maps latents to images with the frozen autoencoder. The stages see only this protocol
(``restorers.py``), so pretrain, rl, distill and rl+distill train the ControlNet unchanged. The grid is FLUX's
shifted grid (``sampling.steps``, ``sampling.shift`` = mu); the FLUX-IR pipeline uses 21 steps, mu 0.4675 and
starts at grid index 1 from the LQ interpolation (MATH.md §9.2, ``distill.start_index = 1``).

Memory on one 80 GB GPU (DESIGN.md "Training"): the frozen base is stored in bf16 (``flux.base_dtype``; fp8
e4m3fn halves it, ``fp8.py``; fp32 is for tests), the ControlNet keeps fp32 master weights and computes under
bf16 autocast on CUDA, both recompute their blocks in the backward pass (``flux.gradient_checkpointing``), and
``flux.fsdp`` shards the base over several GPUs (``fsdp.py``). Latents can be cached (``latent_cache.py``).
"""
import math
from dataclasses import dataclass

import torch

from ..conditioning import load_conditioning, zero_conditioning
from ..grids import RFGrid
from ..models import (AutoEncoder, AutoEncoderParams, Flux, FluxParams, XLabsControlNet, enable_gradient_checkpointing,
                      freeze, image_ids, load, pack_latents, text_ids, xlabs_params)
from .build import build_grid
from .fp8 import quantize_fp8_
from .fsdp import shard_frozen_base
from .latent_cache import LatentCache, latent_cache_plan

STORAGE = {"bf16": torch.bfloat16, "fp8": torch.bfloat16, "fp32": torch.float32}  # fp8: loaded bf16, then quantised
EXPORT_NAME = "trajir_fluxir_controlnet.safetensors"  # the name the shipped workflows load
ZERO_TOKENS = 1  # "no prompt" (the paper's baseline): one zero T5 token and a zero pooled vector
PIXEL_MULTIPLE = 16  # 8x autoencoder downscale, then FLUX's 2x2 patches


@dataclass(frozen=True)
class FluxIROptions:
    """How the restorer stores and runs its parts; ``from_config`` reads the ``flux.*`` keys."""
    base_dtype: str = "bf16"          # bf16 | fp8 | fp32 storage of the frozen base
    gradient_checkpointing: bool = True
    controlnet_scale: float = 0.9     # weight of the ControlNet residuals (the pipeline uses 0.8-0.9)
    guidance: float = 4.0             # FLUX-dev's distilled guidance embedding (4 in the FLUX-IR pipeline)
    cache_gt: bool = False            # cache GT latents (latent_cache.py)
    cache_lq: bool = False            # cache LQ latents
    fsdp: bool = False                # shard the frozen base across ranks

    def __post_init__(self):
        if self.base_dtype not in STORAGE:
            raise ValueError(f"base_dtype must be one of {', '.join(STORAGE)}, got {self.base_dtype!r}")
        if not (math.isfinite(self.controlnet_scale) and self.controlnet_scale >= 0):
            raise ValueError(f"controlnet_scale must be a finite number >= 0, got {self.controlnet_scale}")
        if not math.isfinite(self.guidance):
            raise ValueError(f"guidance must be finite, got {self.guidance}")
        if self.fsdp and self.base_dtype == "fp8":
            raise ValueError("flux.base_dtype = fp8 and flux.fsdp = true do not combine: FSDP shards parameters, and "
                             "the fp8 weights are buffers that every rank would keep whole; choose one")

    @classmethod
    def from_config(cls, cfg):
        cache_gt, cache_lq = latent_cache_plan(cfg)
        return cls(base_dtype=cfg["flux.base_dtype"], gradient_checkpointing=cfg["flux.gradient_checkpointing"],
                   controlnet_scale=cfg["flux.controlnet_scale"], guidance=cfg["flux.guidance"], cache_gt=cache_gt,
                   cache_lq=cache_lq, fsdp=cfg["flux.fsdp"])


def load_kind(path, kind, key, device, dtype=torch.float32):
    """``trajir.models.load`` of a file that must hold a ``kind``; errors name the config key and the file."""
    model = load(path, device=device, dtype=dtype)
    if model.kind != kind:
        raise ValueError(f"{key} = {path} holds a {model.kind}, expected a {kind}")
    return model


def build_base(cfg, device):
    """The frozen FLUX DiT from ``flux.base`` in its storage dtype (fp8 is quantised later), or a random tiny one."""
    dtype = STORAGE[cfg["flux.base_dtype"]]
    if cfg["flux.base"]:
        return load_kind(cfg["flux.base"], "flux", "flux.base", device, dtype)
    if cfg["flux.size"] == "tiny":
        return Flux(FluxParams.tiny(), seed=cfg["run.seed"]).to(device, dtype)
    raise ValueError("flux.base is empty: set it to the FLUX-dev DiT file (flux1-dev.safetensors, BFL layout), or "
                     "flux.size = tiny for a random test model")


def build_autoencoder(cfg, device):
    """The frozen FLUX autoencoder from ``flux.ae`` (float32), or a random tiny one with ``flux.size = tiny``."""
    if cfg["flux.ae"]:
        return load_kind(cfg["flux.ae"], "autoencoder", "flux.ae", device)
    if cfg["flux.size"] == "tiny":
        return AutoEncoder(AutoEncoderParams.tiny(), seed=cfg["run.seed"]).to(device)
    raise ValueError("flux.ae is empty: set it to the FLUX autoencoder file (ae.safetensors), or flux.size = tiny for "
                     "a random test model")


def build_controlnet(cfg, base):
    """The trained XLabs ControlNet in float32: ``run.init`` (an XLabs file), else ``from_flux(base, depth)``."""
    depth, init = cfg["flux.controlnet_depth"], cfg["run.init"]
    ref = base.img_in.weight
    if not init:
        return XLabsControlNet.from_flux(base, depth, seed=cfg["run.seed"]).float().train()
    net = load_kind(init, "xlabs_controlnet", "run.init", ref.device)
    expected = xlabs_params(base.params, depth)
    if net.params != expected:
        raise ValueError(f"run.init = {init} is a ControlNet with {net.params}, but flux.base with "
                         f"flux.controlnet_depth = {depth} needs {expected}")
    return net.float().train()


def text_conditioning(path, params):
    """``(context [1, T, D], pooled [1, P])`` from a prompt-embedding file (``data.prompt_embeddings``) or zeros.

    The file's guidance value is not used: ``flux.guidance`` sets the distilled guidance of training.
    """
    c = load_conditioning(path) if path else zero_conditioning(ZERO_TOKENS, params.context_in_dim, params.vec_in_dim)
    source = f"data.prompt_embeddings = {path}" if path else "zero conditioning"
    if c["context"].shape[-1] != params.context_in_dim or c["pooled"].shape[-1] != params.vec_in_dim:
        raise ValueError(f"{source}: context width {c['context'].shape[-1]} and pooled width "
                         f"{c['pooled'].shape[-1]} do not fit the FLUX base, which takes {params.context_in_dim} "
                         f"(T5) and {params.vec_in_dim} (pooled CLIP-L)")
    return c["context"].float()[None], c["pooled"].float()[None]


def check_crop_sizes(cfg):
    for key in ("data.crop", "data.val_crop"):
        if cfg[key] % PIXEL_MULTIPLE:
            raise ValueError(f"{key} must be a multiple of {PIXEL_MULTIPLE} for FLUX (8x autoencoder, 2x2 patches), "
                             f"got {cfg[key]}")


class FluxIRRestorer:
    """Frozen FLUX ``base`` + trained ``controlnet`` + frozen ``ae`` (and optional frozen ``lq_encoder``).

    Takes ownership of the modules: the base is cast to its storage dtype (fp8: quantised), every frozen part is
    frozen, checkpointing is switched as ``options`` say, and with ``options.fsdp`` the base is sharded across
    ``env``'s ranks. Build the ControlNet from the base before handing both over (``from_flux`` copies weights).
    ``context`` ``[1, T, D]`` / ``pooled`` ``[1, P]`` are the prompt embeddings (None: zeros).
    """

    kind = "fluxir_controlnet"
    export_name = EXPORT_NAME

    def __init__(self, base, ae, controlnet, grid, device, options=FluxIROptions(), *, lq_encoder=None, context=None,
                 pooled=None, env=None):
        if not isinstance(base, Flux) or not isinstance(controlnet, XLabsControlNet) \
                or not isinstance(ae, AutoEncoder):
            raise ValueError(f"base, controlnet and ae must be a trajir Flux, XLabsControlNet and AutoEncoder, got "
                             f"{type(base).__name__}, {type(controlnet).__name__}, {type(ae).__name__}")
        if not isinstance(grid, RFGrid):
            raise ValueError(f"grid must be an RFGrid (FLUX is a rectified-flow model), got {type(grid).__name__}")
        if ae.params.z_channels != base.params.in_channels:
            raise ValueError(f"the autoencoder has {ae.params.z_channels} latent channels but the FLUX base takes "
                             f"{base.params.in_channels}")
        self.device, self.grid, self.options = torch.device(device), grid, options
        if context is None:
            context, pooled = text_conditioning("", base.params)
        self.context, self.pooled = context.to(self.device), pooled.to(self.device)
        self.ae = freeze(ae.float().to(self.device))
        self.lq_encoder = freeze(lq_encoder.float().to(self.device)) if lq_encoder is not None else None
        self.controlnet = enable_gradient_checkpointing(controlnet.float().to(self.device).train(),
                                                        options.gradient_checkpointing)
        # the text stream leaving the last ControlNet block feeds no residual: its weights can never get a
        # gradient, and DDP would wait for one forever
        last = self.controlnet.double_blocks[-1]
        for p in (*last.txt_attn.proj.parameters(), *last.txt_mlp.parameters()):
            p.requires_grad_(False)
        base = enable_gradient_checkpointing(freeze(base), options.gradient_checkpointing)
        base = quantize_fp8_(base) if options.base_dtype == "fp8" else base.to(STORAGE[options.base_dtype])
        self.base = shard_frozen_base(base, env) if options.fsdp else base.to(self.device)
        self.autocast = self.device.type == "cuda"  # bf16 compute of the fp32 ControlNet; off on the CPU
        self.gt_cache = LatentCache() if options.cache_gt else None
        self.lq_cache = LatentCache() if options.cache_lq else None

    @classmethod
    def from_config(cls, cfg, env):
        """Everything from a training config (``flux.*``, ``run.init``, ``data.prompt_embeddings``)."""
        if cfg["model.param"] != "rf":
            raise ValueError(f"model.kind = fluxir_controlnet is a rectified-flow model; model.param must be rf, got "
                             f"{cfg['model.param']}")
        check_crop_sizes(cfg)
        options = FluxIROptions.from_config(cfg)
        # a sharded base is loaded on the CPU: FSDP moves one block at a time to the GPU as it shards
        load_device = torch.device("cpu") if options.fsdp else env.device
        base = build_base(cfg, load_device)
        ae = build_autoencoder(cfg, env.device)
        lq_encoder = load_kind(cfg["flux.lq_encoder"], "lq_encoder", "flux.lq_encoder", env.device) \
            if cfg["flux.lq_encoder"] else None
        if lq_encoder is not None and lq_encoder.params != ae.params:
            raise ValueError(f"flux.lq_encoder = {cfg['flux.lq_encoder']} has {lq_encoder.params}, but flux.ae has "
                             f"{ae.params}")
        controlnet = build_controlnet(cfg, base)
        context, pooled = text_conditioning(cfg["data.prompt_embeddings"], base.params)
        return cls(base, ae, controlnet, build_grid(cfg), env.device, options, lq_encoder=lq_encoder, context=context,
                   pooled=pooled, env=env)

    @property
    def collective(self):
        """True when every forward pass of the base is a collective over the ranks (FSDP)."""
        return self.options.fsdp

    def lq_latent(self, images):
        """``E_LQ(y)``: the LQ encoder's latent, or the autoencoder's when no LQ encoder is given."""
        return self.lq_encoder(images) if self.lq_encoder is not None else self.ae.encode(images)

    def _latents(self, encoder, images, cache):
        if cache is None:
            return encoder(images.to(self.device, torch.float32))
        return cache.encode(encoder, images, self.device)

    def encode(self, batch):
        """``{"x0": E(gt), "lq": E_LQ(lq), "cond": {"hint", "txt", "y", "guidance"}}``, latents in model space."""
        with torch.no_grad():
            x0 = self._latents(self.ae.encode, batch["gt"], self.gt_cache)
            lq = self._latents(self.lq_latent, batch["lq"], self.lq_cache)
        hint = batch["lq"].to(self.device, torch.float32)
        b = hint.shape[0]
        cond = {"hint": hint, "txt": self.context.expand(b, -1, -1), "y": self.pooled.expand(b, -1),
                "guidance": torch.full((b,), float(self.options.guidance), device=self.device)}
        return {"x0": x0, "lq": lq, "cond": cond}

    def predict(self, net, x, t, cond):
        """Velocity of the base with ``net``'s residuals (``net``: the ControlNet, its DDP wrapper or a copy)."""
        b, _, h, w = x.shape
        txt = cond["txt"]
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            residuals = net(pack_latents(x), image_ids(b, h, w, device=x.device), cond["hint"], txt,
                            text_ids(b, txt.shape[1], device=x.device), t, cond["y"], cond["guidance"])
        residuals = [r * self.options.controlnet_scale for r in residuals]
        v = self.base.velocity(x, t, txt, cond["y"], cond["guidance"], controlnet_residuals=residuals)
        return v.to(x.dtype)

    def decode(self, x):
        """Model-space latents -> images in 0..1."""
        return self.ae.decode(x.float())

    def trainable(self):
        return self.controlnet
