"""TrajIR LQ Initial State: start sampling from the LQ latent forward-diffused to the start time, Eq. (17).

ComfyUI's samplers already form ``sigma_0 * noise + (1 - sigma_0) * latent`` (CONST noise scaling, docs/comfyui.md §3)
from the model-space latent. So cutting the schedule at the start and handing the LQ latent over as the latent
image makes SamplerCustomAdvanced + RandomNoise begin exactly at ``(1 - t_s) E(y) + t_s eps``, with ComfyUI's own
noise. An LQ weight other than the schedule's ``1 - t_s`` rescales the latent in model space
(``trajir.interpolation.rf_latent_scale_for_lq_weight``).
"""
import math

import torch

from ..trajir.interpolation import rf_latent_scale_for_lq_weight
from ..trajir.samplers import check_sigmas
from .comfy_bridge import latent_samples, model_latent_channels, parameterisation

START_MODES = ("step", "sigma")


def cut_schedule(sigmas, mode, start_step, start_sigma):
    """The schedule from the start on: ``sigmas[start_step:]`` (mode ``step``), or ``start_sigma`` followed by the
    schedule's sigmas below it (mode ``sigma``). At least one step must remain."""
    if not torch.is_tensor(sigmas) or sigmas.ndim != 1 or sigmas.numel() < 2:
        shape = tuple(sigmas.shape) if torch.is_tensor(sigmas) else type(sigmas).__name__
        raise ValueError(f"sigmas must be a 1-D SIGMAS schedule of at least 2 values, got {shape}")
    check_sigmas(sigmas, "ve")  # finite, strictly decreasing, >= 0 (the bound 1 of rectified flow is the model's)
    n = sigmas.numel()
    if mode == "step":
        if not 0 <= start_step <= n - 2:
            raise ValueError(f"start_step must lie in [0, {n - 2}] for a schedule of {n - 1} steps (at least one "
                             f"step must remain), got {start_step}")
        return sigmas[start_step:].clone()
    if mode == "sigma":
        first, last = float(sigmas[0]), float(sigmas[-1])
        if not (math.isfinite(start_sigma) and last < start_sigma <= first):
            raise ValueError(f"start_sigma must lie in ({last:.6g}, {first:.6g}] (inside the schedule, above its "
                             f"last value), got {start_sigma}")
        rest = sigmas[sigmas < start_sigma]
        return torch.cat([sigmas.new_tensor([start_sigma]), rest])
    raise ValueError(f"start_mode must be one of {START_MODES}, got {mode!r}")


def weighted_latent(samples, scale, process_in, process_out):
    """The VAE-space latent whose model-space value is ``scale`` times that of ``samples``.

    ComfyUI's latent formats are affine (``process_in(z) = (z - shift) * factor``), so scaling has to happen in
    model space: ``process_out(scale * process_in(samples))``.
    """
    return process_out(scale * process_in(samples))


class TrajIRLQInitialState:
    """Turns an LQ latent and a schedule into the latent image and the cut schedule of Eq. (17)."""

    DESCRIPTION = ("LQ-interpolated initial state, FLUX-IR Eq. (17): feed its latent and sigmas to "
                   "SamplerCustomAdvanced (with RandomNoise) so sampling starts at (1 - t_s) * LQ + t_s * noise "
                   "instead of pure noise.")
    CATEGORY = "TrajIR/sampling"
    RETURN_TYPES = ("LATENT", "SIGMAS")
    RETURN_NAMES = ("latent", "sigmas")
    OUTPUT_TOOLTIPS = ("The LQ latent to use as latent_image (rescaled when lq_weight is set).",
                       "The schedule cut at the start (its first value is t_s).")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "model": ("MODEL", {"tooltip": "The diffusion model; gives the latent format and the sampling "
                                               "kind."}),
                "lq_latent": ("LATENT", {"tooltip": "The VAE-encoded low-quality image."}),
                "sigmas": ("SIGMAS", {"tooltip": "The full schedule, e.g. from BasicScheduler."}),
                "start_mode": (list(START_MODES), {"default": "step",
                               "tooltip": "step: start at sigmas[start_step]; sigma: start at start_sigma (t_s)."}),
                "start_step": ("INT", {"default": 1, "min": 0, "max": 10000,
                                       "tooltip": "Index of the first sigma to keep (FLUX-IR starts at 1 of 21)."}),
                "start_sigma": ("FLOAT", {"default": 0.97, "min": 0.0, "max": 1000.0, "step": 0.001,
                                          "tooltip": "The start time t_s when start_mode is sigma."}),
            },
            "optional": {
                "lq_weight": ("FLOAT", {"default": -1.0, "min": -1.0, "max": 1.0, "step": 0.001,
                                        "tooltip": "Weight of the LQ latent in the start state; -1 uses the "
                                                   "schedule's value 1 - t_s. Rectified-flow models only."}),
            },
        }

    def run(self, model, lq_latent, sigmas, start_mode, start_step, start_sigma, lq_weight=-1.0):
        if not math.isfinite(lq_weight):  # "NaN >= 0" is false: NaN would silently mean the default
            raise ValueError(f"lq_weight must be a finite number (-1 uses the schedule's value), got {lq_weight}")
        samples = latent_samples("lq_latent", lq_latent, model_latent_channels(model), frames=True)
        cut = cut_schedule(sigmas, start_mode, start_step, start_sigma)
        out = dict(lq_latent)
        if lq_weight >= 0:
            if parameterisation(model.get_model_object("model_sampling")) != "rf":
                raise ValueError("lq_weight applies to rectified-flow models (FLUX, SD3); for noise-prediction "
                                 "models leave it at -1 (the schedule's value)")
            scale = rf_latent_scale_for_lq_weight(float(lq_weight), float(cut[0]))
            latent_format = model.get_model_object("latent_format")
            out["samples"] = weighted_latent(samples, scale, latent_format.process_in, latent_format.process_out)
        return (out, cut)
