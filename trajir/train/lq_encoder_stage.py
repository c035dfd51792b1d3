"""``model.kind = "lq_encoder"``, stage ``pretrain``: fine-tune the LQ encoder ``E_LQ`` (docs/equations.md §11).

``E_LQ`` starts as a copy of the FLUX autoencoder's encoder and learns ``E_LQ(y) ≈ E(x_gt)`` with
``lq_alignment_loss`` against the frozen encoder ``E`` (our reading, docs/equations.md §10; the paper's code
trains it with lr 2e-5, bf16). Its latent is the anchor of the LQ-interpolated start, Eq. (17), of the FLUX-IR ControlNet
(``flux.lq_encoder``). Validation reports the latent MSE to ``E(x_gt)`` and the PSNR of ``decode(E_LQ(y))`` against
the GT image, and writes a PNG grid LQ | decode(E_LQ(LQ)) | GT.
"""
import os

import torch

from ..data import evaluation_batches, write_png
from ..models import LQEncoder, enable_gradient_checkpointing, freeze, lq_alignment_loss, save
from .flux_restorer import build_autoencoder, load_kind
from .latent_cache import LatentCache, latent_cache_plan
from .stage_base import Stage

EXPORT_NAME = "trajir_lq_encoder.safetensors"
PIXEL_MULTIPLE = 8  # the autoencoder's downscale


class LQEncoderRestorer:
    """The frozen autoencoder (target ``E`` and decoder) and the trained LQ encoder ``E_LQ``."""

    kind = "lq_encoder"
    export_name = EXPORT_NAME

    def __init__(self, ae, lq_encoder, device, gradient_checkpointing=True, cache_gt=False):
        if lq_encoder.params != ae.params:
            raise ValueError(f"the LQ encoder has {lq_encoder.params} but the autoencoder has {ae.params}")
        self.device = torch.device(device)
        self.ae = freeze(ae.float().to(self.device))
        self.lq_encoder = enable_gradient_checkpointing(lq_encoder.float().to(self.device).train(),
                                                        gradient_checkpointing)
        self.autocast = self.device.type == "cuda"  # fp32 master weights, bf16 compute on CUDA
        self.gt_cache = LatentCache() if cache_gt else None

    @classmethod
    def from_config(cls, cfg, env):
        """``flux.ae`` (or a tiny random one), and ``run.init`` (an LQ encoder file) or a copy of the AE encoder."""
        if cfg["flux.fsdp"]:
            raise ValueError("flux.fsdp applies to model.kind = fluxir_controlnet (it shards the FLUX base); set it "
                             "to false for model.kind = lq_encoder")
        for key in ("data.crop", "data.val_crop"):
            if cfg[key] % PIXEL_MULTIPLE:
                raise ValueError(f"{key} must be a multiple of {PIXEL_MULTIPLE} (the autoencoder's downscale), got "
                                 f"{cfg[key]}")
        ae = build_autoencoder(cfg, env.device)
        if cfg["run.init"]:
            lq_encoder = load_kind(cfg["run.init"], "lq_encoder", "run.init", env.device)
        else:
            lq_encoder = LQEncoder.from_autoencoder(ae)
        return cls(ae, lq_encoder, env.device, cfg["flux.gradient_checkpointing"], latent_cache_plan(cfg)[0])

    def target(self, gt):
        """``E(x_gt)`` in model space, without gradients (cached when the data allows, ``latent_cache.py``)."""
        with torch.no_grad():
            if self.gt_cache is not None:
                return self.gt_cache.encode(self.ae.encode, gt, self.device)
            return self.ae.encode(gt.to(self.device, torch.float32))

    def lq_latent(self, net, lq):
        """``E_LQ(y)`` of ``net`` (the LQ encoder, its DDP wrapper or a copy)."""
        with torch.autocast(self.device.type, dtype=torch.bfloat16, enabled=self.autocast):
            return net(lq.to(self.device, torch.float32)).float()

    def decode(self, x):
        return self.ae.decode(x.float())

    def trainable(self):
        return self.lq_encoder


class LQEncoderPretrain(Stage):
    """``mean ||E_LQ(y) - sg[E(x_gt)]||^2`` over latent elements (``lq_alignment_loss``)."""

    name = "pretrain"

    def loss(self, batch, keys):
        target = self.restorer.target(batch["gt"])
        loss = lq_alignment_loss(self.restorer.lq_latent(self.model, batch["lq"]), target)
        return loss, {"loss": loss.detach()}

    @torch.no_grad()
    def evaluate(self, net, datasets, grid_rows=0):
        """Mean latent MSE and PSNR over the held-out samples (``val.draws`` per image), and a picture grid."""
        from ..rewards import score

        net.eval()
        mse, psnr, rows = [], [], []
        for dataset in datasets:
            for draw in range(self.cfg["val.draws"]):
                for batch in evaluation_batches(dataset, self.cfg["val.batch_size"], draw=draw):
                    z = self.restorer.lq_latent(net, batch["lq"])
                    target = self.restorer.ae.encode(batch["gt"].to(self.restorer.device, torch.float32))
                    mse.append(((z - target) ** 2).flatten(1).mean(1).cpu())
                    out = self.restorer.decode(z).cpu().float()
                    psnr.append(score("psnr", out, batch["gt"]))
                    for lq, o, gt in zip(batch["lq"], out, batch["gt"]):
                        if len(rows) < grid_rows:
                            rows.append(torch.cat([lq, o, gt], dim=-1))
        values = {"val/latent_mse": float(torch.cat(mse).mean()), "val/psnr": float(torch.cat(psnr).mean())}
        return values, (torch.cat(rows, dim=-2) if rows else None)

    def validate(self, net, datasets, step):
        if not self.env.is_main:
            return {}
        values, picture = self.evaluate(net, datasets, grid_rows=4 if self.cfg["val.grid"] else 0)
        if picture is not None:
            write_png(os.path.join(self.cfg["run.out_dir"], "val", f"step_{step:08d}.png"), picture)
        return values

    def export(self, net, cfg):
        """The LQ encoder file (``encoder.*`` keys of ``ae.safetensors``), for ``flux.lq_encoder``."""
        return save(net, os.path.join(cfg["run.out_dir"], cfg["run.export"] or self.restorer.export_name))
