"""The FLUX-IR restorer for training: a trainable ControlNet on a frozen FLUX (docs/equations.md §11).

The ControlNet is in one of the two formats ComfyUI's ControlNetLoader opens (``flux.controlnet``): ``xlabs``
(``XLabsControlNet``, the LQ image as its hint; built from the base, or ``run.init``) or ``instantx``
(``InstantXControlNet``, diffusers layout, the VAE latent of the LQ image as its hint; ``run.init`` takes a public
file such as jasperai's upscaler or a Union ControlNet, whose mode ``flux.controlnet_mode`` selects).

States are FLUX latents in model space. ``encode`` gives the GT latent ``E(x_gt)`` (x0), the LQ latent
``E_LQ(y)``, which anchors the LQ-interpolated start of Eq. (17) and negative LQ guidance of Eq. (19)–(20), and
the conditioning: the ControlNet hint, the prompt embeddings (T5 tokens, pooled CLIP-L) and the distilled
guidance. ``predict`` runs the ControlNet, scales its residuals by ``flux.controlnet_scale`` and lets the frozen
base add them after its double blocks (and single blocks, InstantX); the base returns the velocity. ``decode``
maps latents to images with the frozen autoencoder. The stages see only this protocol (``restorers.py``), so
pretrain, rl, distill and rl+distill train the ControlNet unchanged, in either format. The grid is FLUX's
shifted grid (``sampling.steps``, ``sampling.shift`` = mu); the FLUX-IR pipeline uses 21 steps, mu 0.4675 and
starts at grid index 1 from the LQ interpolation (docs/equations.md §11, ``distill.start_index = 1``).

Memory on one 80 GB GPU (docs/architecture.md §6): the frozen base is stored in bf16 (``flux.base_dtype``; fp8
e4m3fn halves it, ``fp8.py``; fp32 is for tests), the ControlNet keeps fp32 master weights and computes under
bf16 autocast on CUDA, both recompute their blocks in the backward pass (``flux.gradient_checkpointing``), and
``flux.fsdp`` shards the base over several GPUs (``fsdp.py``). Latents can be cached (``latent_cache.py``).
"""
import math
from dataclasses import dataclass

import torch
import torch.nn.functional as F

from ..conditioning import load_conditioning, zero_conditioning
from ..grids import RFGrid
from ..models import (UNION_MODES, AutoEncoder, AutoEncoderParams, Flux, FluxParams, InstantXControlNet,
                      XLabsControlNet, enable_gradient_checkpointing, freeze, image_ids, load, pack_latents,
                      spread_residuals, text_ids, xlabs_params)
from .build import build_grid
from .fp8 import quantize_fp8_
from .fsdp import shard_frozen_base
from .latent_cache import LatentCache, latent_cache_plan

STORAGE = {"bf16": torch.bfloat16, "fp8": torch.bfloat16, "fp32": torch.float32}  # fp8: loaded bf16, then quantised
CONTROLNET_KINDS = {"xlabs": "xlabs_controlnet", "instantx": "instantx_controlnet"}  # flux.controlnet -> model kind
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
    controlnet_mode: int = -1         # a Union ControlNet's mode (-1: none)

    def __post_init__(self):
        if self.base_dtype not in STORAGE:
            raise ValueError(f"base_dtype must be one of {', '.join(STORAGE)}, got {self.base_dtype!r}")
        if not (math.isfinite(self.controlnet_scale) and self.controlnet_scale >= 0):
            raise ValueError(f"controlnet_scale must be a finite number >= 0, got {self.controlnet_scale}")
        if not math.isfinite(self.guidance):
            raise ValueError(f"guidance must be finite, got {self.guidance}")
        if isinstance(self.controlnet_mode, bool) or not isinstance(self.controlnet_mode, int) \
                or self.controlnet_mode < -1:
            raise ValueError(f"controlnet_mode must be -1 (none) or a mode index >= 0, got {self.controlnet_mode!r}")
        if self.fsdp and self.base_dtype == "fp8":
            raise ValueError("flux.base_dtype = fp8 and flux.fsdp = true do not combine: FSDP shards parameters, and "
                             "the fp8 weights are buffers that every rank would keep whole; choose one")

    @classmethod
    def from_config(cls, cfg):
        cache_gt, cache_lq = latent_cache_plan(cfg)
        return cls(base_dtype=cfg["flux.base_dtype"], gradient_checkpointing=cfg["flux.gradient_checkpointing"],
                   controlnet_scale=cfg["flux.controlnet_scale"], guidance=cfg["flux.guidance"], cache_gt=cache_gt,
                   cache_lq=cache_lq, fsdp=cfg["flux.fsdp"], controlnet_mode=cfg["flux.controlnet_mode"])

    @property
    def mode(self):
        """The Union mode as ``InstantXControlNet.forward`` takes it (None: no mode)."""
        return None if self.controlnet_mode < 0 else self.controlnet_mode


def load_kind(path, kind, key, device, dtype=torch.float32):
    """``trajir.models.load`` of a file that must hold a ``kind``; errors name the config key and the file."""
    model = load(path, device=device, dtype=dtype)
    if model.kind != kind:
        other = {v: k for k, v in CONTROLNET_KINDS.items()}.get(model.kind)
        hint = f" (for this file set flux.controlnet = {other})" if other and kind in CONTROLNET_KINDS.values() else ""
        raise ValueError(f"{key} = {path} holds a {model.kind}, expected a {kind}{hint}")
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
    """The trained ControlNet in float32, in the format ``flux.controlnet`` names.

    ``xlabs``: ``run.init`` (an XLabs file of depth ``flux.controlnet_depth``), else ``from_flux(base, depth)``.
    ``instantx``: ``run.init`` (a diffusers ``FluxControlNetModel`` file; its block and mode counts are the
    file's), else ``from_flux`` with ``flux.controlnet_depth`` double, ``flux.controlnet_single_depth`` single
    blocks and ``flux.controlnet_modes`` Union modes.
    """
    depth, init, fmt = cfg["flux.controlnet_depth"], cfg["run.init"], cfg["flux.controlnet"]
    ref = base.img_in.weight
    if fmt == "xlabs":
        if not init:
            return XLabsControlNet.from_flux(base, depth, seed=cfg["run.seed"]).float().train()
        net = load_kind(init, "xlabs_controlnet", "run.init", ref.device)
        expected = xlabs_params(base.params, depth)
        if net.params != expected:
            raise ValueError(f"run.init = {init} is a ControlNet with {net.params}, but flux.base with "
                             f"flux.controlnet_depth = {depth} needs {expected}")
        return net.float().train()
    if not init:
        return InstantXControlNet.from_flux(base, depth, cfg["flux.controlnet_single_depth"],
                                            cfg["flux.controlnet_modes"], seed=cfg["run.seed"]).float().train()
    net = load_kind(init, "instantx_controlnet", "run.init", ref.device)
    check_fits_base(net.params, base.params, f"run.init = {init}")
    return net.float().train()


# widths a ControlNet must share with its base (block counts are checked separately: they may be smaller)
SHARED_FIELDS = ("in_channels", "vec_in_dim", "context_in_dim", "hidden_size", "mlp_ratio", "num_heads", "axes_dim",
                 "theta", "qkv_bias", "guidance_embed")


def check_fits_base(params, base, source):
    """An InstantX ControlNet's widths equal the base's, and its block counts do not exceed the base's (every
    residual must reach a base block)."""
    wrong = [f"{f} {getattr(params, f)!r} (flux.base: {getattr(base, f)!r})" for f in SHARED_FIELDS
             if getattr(params, f) != getattr(base, f)]
    if params.depth > base.depth:
        wrong.append(f"{params.depth} double blocks (flux.base has {base.depth})")
    if params.depth_single_blocks > base.depth_single_blocks:
        wrong.append(f"{params.depth_single_blocks} single blocks (flux.base has {base.depth_single_blocks})")
    if wrong:
        raise ValueError(f"{source} does not fit the FLUX base: " + "; ".join(wrong))


def check_controlnet_mode(net, mode, source):
    """``flux.controlnet_mode`` must name a row of a Union file's mode embedder, and be -1 for any other file."""
    modes = getattr(net.params, "num_modes", 0)
    if modes and mode < 0:
        raise ValueError(f"{source} is a Union ControlNet with {modes} modes: set flux.controlnet_mode to the mode to "
                         f"train (0..{modes - 1}; the InstantX / Shakker-Labs Union modes are "
                         f"{', '.join(f'{k} {v}' for k, v in UNION_MODES.items())})")
    if modes and mode >= modes:
        raise ValueError(f"flux.controlnet_mode = {mode} is out of range for {source}, a Union ControlNet with "
                         f"modes 0..{modes - 1}")
    if not modes and mode >= 0:
        raise ValueError(f"flux.controlnet_mode = {mode}, but {source} has no mode embedder (not a Union "
                         "ControlNet); set flux.controlnet_mode = -1")


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
        if not isinstance(base, Flux) or not isinstance(controlnet, (XLabsControlNet, InstantXControlNet)) \
                or not isinstance(ae, AutoEncoder):
            raise ValueError(f"base, controlnet and ae must be a trajir Flux, an XLabsControlNet or InstantXControlNet "
                             f"and an AutoEncoder, got {type(base).__name__}, {type(controlnet).__name__}, "
                             f"{type(ae).__name__}")
        self.latent_hint = isinstance(controlnet, InstantXControlNet)  # InstantX: the hint is the LQ's VAE latent
        if self.latent_hint:
            check_fits_base(controlnet.params, base.params, "the ControlNet")
        check_controlnet_mode(controlnet, options.controlnet_mode, "the ControlNet")
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
        # the text stream leaving the last double block feeds no residual when no single block follows: its
        # weights can never get a gradient, and DDP would wait for one forever
        if not getattr(self.controlnet, "single_blocks", None):
            last = self.controlnet.double_blocks[-1]
            for p in (*last.txt_attn.proj.parameters(), *last.txt_mlp.parameters()):
                p.requires_grad_(False)
        base = enable_gradient_checkpointing(freeze(base), options.gradient_checkpointing)
        base = quantize_fp8_(base) if options.base_dtype == "fp8" else base.to(STORAGE[options.base_dtype])
        self.base = shard_frozen_base(base, env) if options.fsdp else base.to(self.device)
        self.autocast = self.device.type == "cuda"  # bf16 compute of the fp32 ControlNet; off on the CPU
        self.gt_cache = LatentCache() if options.cache_gt else None
        self.lq_cache = LatentCache() if options.cache_lq else None
        # with an LQ encoder, the InstantX hint (the autoencoder's latent, as in ComfyUI) is a separate encode
        self.hint_cache = LatentCache() if options.cache_lq and self.lq_encoder is not None else None

    @classmethod
    def from_config(cls, cfg, env):
        """Everything from a training config (``flux.*``, ``run.init``, ``data.prompt_embeddings``)."""
        if cfg["model.param"] != "rf":
            raise ValueError(f"model.kind = fluxir_controlnet is a rectified-flow model; model.param must be rf, got "
                             f"{cfg['model.param']}")
        check_crop_sizes(cfg)
        if cfg["flux.controlnet"] == "xlabs" and (cfg["flux.controlnet_single_depth"] or cfg["flux.controlnet_modes"]):
            raise ValueError("flux.controlnet_single_depth and flux.controlnet_modes describe an InstantX ControlNet; "
                             "an XLabs ControlNet has neither (set flux.controlnet = instantx, or leave them at 0)")
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
        check_controlnet_mode(controlnet, options.controlnet_mode, f"run.init = {cfg['run.init']}" if cfg["run.init"]
                              else f"the new {cfg['flux.controlnet']} ControlNet (flux.controlnet_modes = "
                                   f"{cfg['flux.controlnet_modes']})")
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
        """``{"x0": E(gt), "lq": E_LQ(lq), "cond": {"hint", "txt", "y", "guidance"}}``, latents in model space.

        The hint is the LQ image (0..1) for an XLabs ControlNet and the autoencoder's latent of it for an InstantX
        one (what ComfyUI's ControlNetApplyAdvanced feeds it with a VAE connected).
        """
        with torch.no_grad():
            x0 = self._latents(self.ae.encode, batch["gt"], self.gt_cache)
            lq = self._latents(self.lq_latent, batch["lq"], self.lq_cache)
            if not self.latent_hint:
                hint = batch["lq"].to(self.device, torch.float32)
            elif self.lq_encoder is None:
                hint = lq
            else:
                hint = self._latents(self.ae.encode, batch["lq"], self.hint_cache)
        b = hint.shape[0]
        cond = {"hint": hint, "txt": self.context.expand(b, -1, -1), "y": self.pooled.expand(b, -1),
                "guidance": torch.full((b,), float(self.options.guidance), device=self.device)}
        return {"x0": x0, "lq": lq, "cond": cond}

    def predict(self, net, x, t, cond):
        """Velocity of the base with ``net``'s residuals (``net``: the ControlNet, its DDP wrapper or a copy)."""
        b, _, h, w = x.shape
        txt, scale = cond["txt"], self.options.controlnet_scale
        args = (pack_latents(x), image_ids(b, h, w, device=x.device), cond["hint"], txt,
                text_ids(b, txt.shape[1], device=x.device), t, cond["y"], cond["guidance"])
        single = None
        with torch.autocast(x.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            if self.latent_hint:
                double, single = net(*args, mode=self.options.mode)
            else:
                double = net(*args)
        double = [r * scale for r in double]
        if self.latent_hint:  # InstantX: each residual serves a run of consecutive base blocks
            double = spread_residuals(double, self.base.params.depth)
            single = spread_residuals([r * scale for r in single], self.base.params.depth_single_blocks) \
                if single else None
        v = self.base.velocity(x, t, txt, cond["y"], cond["guidance"], controlnet_residuals=double,
                               controlnet_single_residuals=single)
        return v.to(x.dtype)

    def control_hint(self, image, h, w):
        """The ControlNet hint for latents of size ``h x w`` from a 0..1 image (a branch record's LQ image):
        resized to the decoded size ``8h x 8w``, then encoded by the autoencoder for an InstantX ControlNet."""
        image = image.to(self.device, torch.float32)
        if image.shape[-2:] != (8 * h, 8 * w):  # ComfyUI keeps the hint at the image's size
            image = F.interpolate(image, size=(8 * h, 8 * w), mode="bilinear", align_corners=False)
        if not self.latent_hint:
            return image
        with torch.no_grad():
            return self.ae.encode(image)

    def decode(self, x):
        """Model-space latents -> images in 0..1."""
        return self.ae.decode(x.float())

    def trainable(self):
        return self.controlnet
