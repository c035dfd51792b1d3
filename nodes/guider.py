"""TrajIR Negative LQ Guidance: a GUIDER (``comfy.samplers.CFGGuider`` subclass) applying Eq. (19)-(20).

In x0 space negative LQ guidance is parameterisation-free (docs/equations.md §8): the guided clean estimate is
``(1 + w) x0 - w y`` with ``y`` the LQ latent in model space. ``x0`` is what CFGGuider itself returns
(``comfy.samplers.sampling_function``: the cond / uncond batch, ComfyUI's pre-CFG hooks, the CFG function and
the post-CFG hooks), so w = 0 is exactly CFGGuider. The subclass is built on first use, never at import.
"""
import functools
import math

import torch

from ..trajir.guidance import ngs_x0
from .comfy_bridge import WINDOW_UNITS, latent_samples, model_latent_channels, window_sigmas


def lq_for_batch(lq, x):
    """The LQ latent tiled to the batch of ``x`` (ComfyUI tiles conditioning the same way); shapes must agree."""
    if lq.shape[1:] != x.shape[1:]:
        raise ValueError(f"lq_latent has shape {tuple(lq.shape)} but the latent being sampled has shape "
                         f"{tuple(x.shape)}; encode the LQ image at the size of the sampled latent")
    if x.shape[0] % lq.shape[0]:
        raise ValueError(f"lq_latent holds {lq.shape[0]} latents, which does not divide the sampled batch of "
                         f"{x.shape[0]}; give one LQ latent or one per image")
    return lq.repeat(x.shape[0] // lq.shape[0], *([1] * (x.ndim - 1)))


def window_weights(w, sigma, sigma_high, sigma_low):
    """``w`` where ``sigma_low <= sigma <= sigma_high``, else 0: a float when the batch agrees, else a [B] tensor."""
    inside = (sigma <= sigma_high) & (sigma >= sigma_low)
    if bool(inside.all()):
        return w
    if not bool(inside.any()):
        return 0.0
    return inside.to(torch.float32) * w


@functools.cache
def guider_class():
    """The CFGGuider subclass, created on first use (ComfyUI is importable only inside ComfyUI)."""
    import comfy.samplers

    class NegativeLQGuider(comfy.samplers.CFGGuider):
        def set_lq(self, lq, w, window, start, end):
            self.lq, self.w = lq, float(w)
            ms = self.model_patcher.get_model_object("model_sampling")
            self.sigma_high, self.sigma_low = window_sigmas(window, start, end, ms.percent_to_sigma)

        def predict_noise(self, x, timestep, model_options=None, seed=None):
            # ComfyUI's CFGGuider.predict_noise, hooks included, then Eq. (20) on its x0
            x0 = comfy.samplers.sampling_function(self.inner_model, x, timestep, self.conds.get("negative"),
                                                  self.conds.get("positive"), self.cfg,
                                                  model_options={} if model_options is None else model_options,
                                                  seed=seed)
            w = window_weights(self.w, timestep.float(), self.sigma_high, self.sigma_low)
            if not torch.is_tensor(w) and w == 0:
                return x0
            y = self.inner_model.process_latent_in(self.lq.to(device=x0.device, dtype=x0.dtype))
            return ngs_x0(x0, lq_for_batch(y, x0), w)

    return NegativeLQGuider


class TrajIRNegativeLQGuidance:
    """CFGGuider plus negative LQ guidance: pushes the clean estimate away from the low-quality input."""

    DESCRIPTION = ("Negative LQ guidance, FLUX-IR Eq. (19)-(20): a CFGGuider (positive, negative, cfg) whose "
                   "denoised estimate x0 becomes (1 + w) * x0 - w * LQ. w = 0 is exactly CFGGuider.")
    CATEGORY = "TrajIR/sampling"
    RETURN_TYPES = ("GUIDER",)
    RETURN_NAMES = ("guider",)
    OUTPUT_TOOLTIPS = ("The guider; connect it to SamplerCustomAdvanced or TrajIR Best-of-N.",)
    FUNCTION = "get_guider"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model."}),
                "positive": ("CONDITIONING", {"tooltip": "Positive conditioning, as for CFGGuider."}),
                "negative": ("CONDITIONING", {"tooltip": "Negative conditioning, as for CFGGuider (unused at "
                                                         "cfg 1)."}),
                "lq_latent": ("LATENT", {"tooltip": "The VAE-encoded low-quality image, at the size being "
                                                    "sampled."}),
                "cfg": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 100.0, "step": 0.1, "round": 0.01,
                                  "tooltip": "Classifier-free guidance scale, as for CFGGuider (1 skips the "
                                             "negative)."}),
                "w": ("FLOAT", {"default": 0.05, "min": 0.0, "max": 10.0, "step": 0.001,
                                "tooltip": "Negative LQ guidance strength: x0 -> (1 + w) x0 - w LQ. 0 disables "
                                           "it; the paper's task models use 0.001."}),
            },
            "optional": {
                "window": (list(WINDOW_UNITS), {"default": "percent",
                           "tooltip": "Unit of start / end: percent of the sampling run or sigma values."}),
                "start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1000.0, "step": 0.01,
                                    "tooltip": "Where the guidance begins: a percent (0..1) or a sigma."}),
                "end": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1000.0, "step": 0.01,
                                  "tooltip": "Where the guidance ends: a percent (0..1) or a sigma."}),
            },
        }

    def get_guider(self, model, positive, negative, lq_latent, cfg, w, window="percent", start=0.0, end=1.0):
        lq = latent_samples("lq_latent", lq_latent, model_latent_channels(model), frames=True)
        if not math.isfinite(w) or w < 0:
            raise ValueError(f"w must be finite and >= 0, got {w}")
        guider = guider_class()(model)
        guider.set_conds(positive, negative)
        guider.set_cfg(cfg)
        guider.set_lq(lq, w, window, start, end)
        return (guider,)
