"""TrajIR M-SDE Sampler: a ComfyUI SAMPLER (``comfy.samplers.KSAMPLER``) around ``trajir.samplers.sample_msde``.

The sampler function detects the model's parameterisation when it runs (docs/comfyui.md §3: CONST -> rectified
flow Eq. (13)-(14), EPS / V_PREDICTION -> the VE step Eq. (11)), turns the eta schedule (``trajir.samplers``) and
the SDE window into one eta per step, and leaves progress and previews to ComfyUI's callback (no ProgressBar of
its own).
"""
import math

import torch

from ..trajir.samplers import ETA_SCHEDULES, check_sigmas, resolve_etas, sample_msde, schedule_etas
from .comfy_bridge import WINDOW_UNITS, check_interrupt, parameterisation, window_sigmas


def step_etas(schedule, eta, sigmas, window, start, end, percent_to_sigma, seed=0):
    """Per-step etas: the schedule, zero outside the window and on the last step (``trajir.samplers.resolve_etas``)."""
    sde_start, sde_end = window_sigmas(window, start, end, percent_to_sigma)
    return resolve_etas(schedule_etas(schedule, eta, sigmas, seed), sigmas, sde_start, sde_end)


def _interruptible(model):
    """``model`` with ComfyUI's interrupt check before every call, so Cancel stops within one model call."""
    def call(x, sigma, **kwargs):
        check_interrupt()
        return model(x, sigma, **kwargs)
    return call


@torch.no_grad()
def msde_sampler_function(model, x, sigmas, extra_args=None, callback=None, disable=None, eta=1.0,
                          eta_schedule="constant", window="percent", sde_start=0.0, sde_end=1.0, s_noise=1.0):
    """The KSAMPLER function: ``model`` is ComfyUI's wrapped guider, ``x`` the noise-scaled start latent."""
    extra_args = {} if extra_args is None else extra_args
    model_sampling = model.inner_model.model_patcher.get_model_object("model_sampling")
    param = parameterisation(model_sampling)
    values = check_sigmas(sigmas, param)
    if extra_args.get("seed") is None:  # a guider sampled without a seed: keep the noise reproducible
        extra_args = {**extra_args, "seed": 0}
    etas = step_etas(eta_schedule, eta, values, window, sde_start, sde_end, model_sampling.percent_to_sigma,
                     extra_args["seed"])
    return sample_msde(_interruptible(model), x, sigmas, extra_args=extra_args, callback=callback,
                       disable=disable, eta=etas, param=param, s_noise=s_noise)


class TrajIRMSDESampler:
    """A SAMPLER for SamplerCustom / SamplerCustomAdvanced that integrates the modulated SDE (M-SDE)."""

    DESCRIPTION = ("M-SDE sampler (FLUX-IR Eq. (13)-(14) for rectified flow, Eq. (11) for noise-prediction models). "
                   "eta = 0 is exactly the euler sampler; eta > 0 explores around the ODE trajectory while keeping "
                   "its marginals. The last step is always an ODE step.")
    CATEGORY = "TrajIR/sampling"
    RETURN_TYPES = ("SAMPLER",)
    RETURN_NAMES = ("sampler",)
    OUTPUT_TOOLTIPS = ("The M-SDE sampler; connect it to SamplerCustom or SamplerCustomAdvanced.",)
    FUNCTION = "get_sampler"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "eta": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 10.0, "step": 0.01,
                              "tooltip": "Modulation strength of the SDE. 0 gives the deterministic ODE (euler); "
                                         "1 makes eta^2 = 1 (the FLUX-IR code draws eta^2 in [0, 1))."}),
            "eta_schedule": (list(ETA_SCHEDULES), {"default": "constant",
                             "tooltip": "constant: eta at every step; proportional: eta * sigma / first sigma "
                                        "(fades towards the data); random: eta * sqrt(U[0,1)) per step, seeded by "
                                        "the noise seed."}),
            "window": (list(WINDOW_UNITS), {"default": "percent",
                       "tooltip": "Unit of sde_start / sde_end: percent of the sampling run (0 = start, 1 = end, as "
                                  "ControlNet start/end) or sigma values (start >= end)."}),
            "sde_start": ("FLOAT", {"default": 0.0, "min": 0.0, "max": 1000.0, "step": 0.01,
                                    "tooltip": "Where the stochastic steps begin: a percent (0..1) or a sigma."}),
            "sde_end": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 1000.0, "step": 0.01,
                                  "tooltip": "Where the stochastic steps end: a percent (0..1) or a sigma. Steps "
                                             "outside the window, and the last step, are ODE steps."}),
            "s_noise": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01,
                                  "tooltip": "Scale of the injected noise; 1 keeps the marginals of the ODE."}),
        }}

    def get_sampler(self, eta, eta_schedule, window, sde_start, sde_end, s_noise):
        # check what can be checked before sampling, so a bad setting fails at this node
        schedule_etas(eta_schedule, eta, [1.0, 0.0])
        window_sigmas(window, sde_start, sde_end, lambda p: 1.0 - p)
        if not math.isfinite(s_noise) or s_noise < 0:
            raise ValueError(f"s_noise must be finite and >= 0, got {s_noise}")
        import comfy.samplers

        options = {"eta": eta, "eta_schedule": eta_schedule, "window": window, "sde_start": sde_start,
                   "sde_end": sde_end, "s_noise": s_noise}
        return (comfy.samplers.KSAMPLER(msde_sampler_function, extra_options=options),)
