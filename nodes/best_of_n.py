"""TrajIR Best-of-N Trajectory Aligner: the ODE trajectory plus N M-SDE branches through ComfyUI's guider,
decoded, scored with a TRAJIR_REWARD, the best one returned (``trajir.best_of_n``; docs/equations.md §5).

The branches run inside ``guider.sample`` as a KSAMPLER function (``BranchSampler``), so conditioning, ControlNet,
model patches and our negative LQ guidance apply exactly as in SamplerCustomAdvanced; the node only adapts
ComfyUI's wrapped model to ``trajir.best_of_n.rollout``. The best branch can be saved as a branch record (x at
t_k and t_k+1, t_k, t_k+1, reward; ``trajir.best_of_n.save_branch``) for ``python -m trajir.train``.
"""
import math

import torch

from ..trajir.best_of_n import (
    BRANCH_MODES,
    ETA_MODES,
    candidate_etas,
    check_branch_step,
    chunk_size,
    count_model_calls,
    rollout,
    save_branch,
    select_best,
)
from ..trajir.samplers import check_sigmas
from .comfy_bridge import (
    check_interrupt,
    image_to_bchw,
    latent_samples,
    model_latent_channels,
    output_path,
    parameterisation,
)


class BranchSampler:
    """A KSAMPLER function: runs ``rollout`` with ComfyUI's wrapped model and keeps the branch states."""

    def __init__(self, etas, mode, branch_step, batch_size):
        self.etas, self.mode, self.branch_step, self.batch_size = etas, mode, branch_step, batch_size
        self.param = self.x_t = self.x_next = self.sigmas = None

    @torch.no_grad()
    def __call__(self, model, x, sigmas, extra_args=None, callback=None, disable=None):
        import comfy.utils

        extra_args = {} if extra_args is None else extra_args
        self.param = parameterisation(model.inner_model.model_patcher.get_model_object("model_sampling"))
        self.sigmas = check_sigmas(sigmas, self.param)
        chunk = chunk_size(self.batch_size, x.shape[0])
        total = count_model_calls(len(sigmas) - 1, self.branch_step, self.mode, len(self.etas) - 1, x.shape[0],
                                  chunk)
        progress, calls = comfy.utils.ProgressBar(total), [0]

        def before_call():
            check_interrupt()
            progress.update_absolute(calls[0], total)
            calls[0] += 1

        def denoise(xb, sigma):
            return model(xb, sigma * xb.new_ones([xb.shape[0]]), **extra_args)

        seed = extra_args.get("seed")
        final, self.x_t, self.x_next = rollout(denoise, x, sigmas, self.etas, self.param, self.mode,
                                               self.branch_step, 0 if seed is None else seed, chunk, before_call)
        progress.update_absolute(total, total)
        return final.reshape(-1, *final.shape[2:])


BRANCH_AT = ("step", "fraction")


def resolve_branch_step(branch_at, branch_step, branch_fraction, steps):
    """The branch step for a schedule of ``steps`` steps: ``branch_step`` itself (``step``), or
    ``floor(branch_fraction * steps)`` kept at most ``steps - 2`` (``fraction``), so one setting fits a schedule of
    any length (0.25 of FLUX-IR's 20 steps is their step 5)."""
    if branch_at == "step":
        return branch_step
    if branch_at != "fraction":
        raise ValueError(f"branch_at must be one of {BRANCH_AT}, got {branch_at!r}")
    if not (isinstance(branch_fraction, (int, float)) and 0.0 <= branch_fraction <= 1.0):
        raise ValueError(f"branch_fraction must lie in [0, 1] (a fraction of the schedule), got {branch_fraction!r}")
    return max(0, min(math.floor(branch_fraction * steps), steps - 2))


def score_table(scores, best, etas):
    """A per-image text table of every candidate's reward; ``*`` marks the best (candidate 0 is the ODE)."""
    lines = ["image  candidate  eta     reward"]
    for b in range(scores.shape[1]):
        for n in range(scores.shape[0]):
            mark = " *" if n == int(best[b]) else ""
            name = "ode" if n == 0 else str(n)
            lines.append(f"{b:>5}  {name:>9}  {etas[n]:<6.3f}  {float(scores[n, b]):.6g}{mark}")
    return "\n".join(lines)


class TrajIRBestOfN:
    """Runs N M-SDE branches next to the ODE trajectory and returns the candidate with the highest reward."""

    DESCRIPTION = ("Best-of-N trajectory alignment (FLUX-IR Eq. (15), Algorithm 1): the ODE trajectory and N M-SDE "
                   "branches, decoded and scored with a TRAJIR_REWARD; returns the best. Ties go to the ODE. "
                   "Optionally saves the best branch for python -m trajir.train.")
    CATEGORY = "TrajIR/alignment"
    RETURN_TYPES = ("LATENT", "IMAGE", "IMAGE", "STRING")
    RETURN_NAMES = ("best_latent", "best_image", "candidates", "scores")
    OUTPUT_TOOLTIPS = ("The best candidate's latent, per image.",
                       "The best candidate decoded, per image.",
                       "All candidates decoded, candidate-major: the ODE first, then branch 1..N.",
                       "A per-image table of every candidate's reward (* marks the best).")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "guider": ("GUIDER", {"tooltip": "The guider (e.g. TrajIR Negative LQ Guidance or CFGGuider)."}),
                "noise": ("NOISE", {"tooltip": "The start noise (RandomNoise); its seed also seeds the branches."}),
                "sigmas": ("SIGMAS", {"tooltip": "The schedule, e.g. from TrajIR LQ Initial State."}),
                "latent_image": ("LATENT", {"tooltip": "The latent to start from (e.g. TrajIR LQ Initial State)."}),
                "vae": ("VAE", {"tooltip": "Decodes the candidates for scoring."}),
                "reward": ("TRAJIR_REWARD", {"tooltip": "The scorer from TrajIR Reward Scorer."}),
                "candidates": ("INT", {"default": 4, "min": 1, "max": 64,
                                       "tooltip": "N, the number of M-SDE branches (the ODE is scored as well)."}),
                "mode": (list(BRANCH_MODES), {"default": "single_step",
                         "tooltip": "single_step: one M-SDE step at branch_step, then ODE (FLUX-IR); throughout: "
                                    "M-SDE at every step but the last."}),
                "branch_step": ("INT", {"default": 5, "min": 0, "max": 10000,
                                        "tooltip": "The step k that branches (single_step) and whose states are "
                                                   "saved; at most steps - 2. Used when branch_at is step."}),
                "eta": ("FLOAT", {"default": 1.0, "min": 0.0, "max": 10.0, "step": 0.01,
                                  "tooltip": "M-SDE modulation of the branches."}),
                "eta_mode": (list(ETA_MODES), {"default": "random",
                             "tooltip": "fixed: every branch uses eta; random: eta * sqrt(U[0,1)) per branch "
                                        "(eta^2 uniform, as the FLUX-IR code)."}),
                "batch_size": ("INT", {"default": 4, "min": 1, "max": 256,
                                       "tooltip": "Latents per model call and per VAE decode (rounded down to whole "
                                                  "image batches)."}),
            },
            "optional": {
                "reference": ("IMAGE", {"tooltip": "Ground truth for full-reference rewards (PSNR, LPIPS)."}),
                "save_branch": ("BOOLEAN", {"default": False,
                                            "tooltip": "Save the best branch as a training record (safetensors) "
                                                       "under ComfyUI's output folder."}),
                "filename": ("STRING", {"default": "trajir/branches/branch",
                                        "tooltip": "Record name relative to the output folder; an existing file "
                                                   "is never overwritten (a _00001 counter is added)."}),
                "branch_at": (list(BRANCH_AT), {"default": "step",
                              "tooltip": "step: branch at branch_step; fraction: at floor(branch_fraction * "
                                         "steps), at most steps - 2, so a shorter schedule still fits."}),
                "branch_fraction": ("FLOAT", {"default": 0.25, "min": 0.0, "max": 1.0, "step": 0.01,
                                              "tooltip": "Where to branch, as a fraction of the schedule's steps, "
                                                         "when branch_at is fraction (0.25 of 20 steps is step "
                                                         "5)."}),
            },
        }

    def run(self, guider, noise, sigmas, latent_image, vae, reward, candidates, mode, branch_step, eta, eta_mode,
            batch_size, reference=None, save_branch=False, filename="trajir/branches/branch", branch_at="step",
            branch_fraction=0.25):
        import comfy.model_management
        import comfy.sample
        import comfy.samplers

        seed = getattr(noise, "seed", None) or 0
        etas = candidate_etas(candidates, eta, eta_mode, seed)
        if mode not in BRANCH_MODES:
            raise ValueError(f"mode must be one of {BRANCH_MODES}, got {mode!r}")
        branch_step = resolve_branch_step(branch_at, branch_step, branch_fraction, len(sigmas) - 1)
        check_branch_step(branch_step, len(sigmas) - 1)
        samples = latent_samples("latent_image", latent_image, model_latent_channels(guider.model_patcher))
        if "noise_mask" in latent_image:
            raise ValueError("latent_image has a noise_mask; Best-of-N samples whole latents (no inpainting)")
        images = samples.shape[0]
        chunk = chunk_size(batch_size, images)
        ref = None if reference is None else image_to_bchw("reference", reference)  # checked before the sampling
        if reward.needs_reference and ref is None:
            raise ValueError("the reward uses a full-reference metric; connect the ground truth to 'reference'")
        if ref is not None and ref.shape[0] not in (1, images):
            raise ValueError(f"reference holds {ref.shape[0]} images but latent_image holds {images}; give one "
                             "reference, or one per image")
        samples = comfy.sample.fix_empty_latent_channels(guider.model_patcher, samples)
        start_noise = noise.generate_noise({**latent_image, "samples": samples})
        if start_noise.shape != samples.shape:
            raise ValueError(f"the noise has shape {tuple(start_noise.shape)} but latent_image has shape "
                             f"{tuple(samples.shape)}; expected equal shapes")

        runner = BranchSampler(etas, mode, branch_step, batch_size)
        out = guider.sample(start_noise, samples, comfy.samplers.KSAMPLER(runner), sigmas, denoise_mask=None,
                            callback=None, disable_pbar=True, seed=seed)
        out = out.to(comfy.model_management.intermediate_device())
        decoded = []
        for part in out.split(chunk):
            check_interrupt()
            decoded.append(vae.decode(part))
        decoded = torch.cat(decoded)
        pixels = image_to_bchw("the decoded candidates", decoded)
        candidates_bchw = pixels.reshape(len(etas), images, *pixels.shape[1:])
        if ref is not None and ref.shape[0] == 1 and images > 1:
            ref = ref.expand(images, -1, -1, -1)
        if ref is not None and ref.shape != candidates_bchw.shape[1:]:
            raise ValueError(f"reference has shape {tuple(ref.shape)} ([B, C, H, W]) but the decoded images have "
                             f"shape {tuple(candidates_bchw.shape[1:])}; give one reference per image at the "
                             "output size")
        best, scores = select_best(candidates_bchw, reward, reference=ref, ode_index=0, chunk_size=chunk)
        best, scores = best.cpu(), scores.cpu()
        flat = best * images + torch.arange(images)
        table = score_table(scores, best, etas)
        if save_branch:
            table += "\nsaved " + self._save(runner, best, scores, filename, etas, guider)
        best_latent = {**latent_image, "samples": out[flat]}
        return (best_latent, decoded[flat], decoded, table)

    @staticmethod
    def _save(runner, best, scores, filename, etas, guider):
        rows = torch.arange(best.shape[0])
        k = runner.branch_step
        path = output_path(filename)
        sigma, sigma_next = runner.sigmas[k], runner.sigmas[k + 1]
        save_branch(path, runner.x_t[best, rows], runner.x_next[best, rows],
                    torch.full((len(rows),), sigma), torch.full((len(rows),), sigma_next),
                    scores[best, rows].float().cpu(), param=runner.param,
                    eta=torch.tensor([float(etas[int(n)]) for n in best]),
                    conditioning=record_conditioning(guider, len(rows)),
                    extra={"mode": runner.mode, "branch_step": k})
        return path


def record_conditioning(guider, batch):
    """What a FLUX-IR ControlNet step was conditioned on, from the guider's positive conditioning: the ControlNet
    hint (the LQ image, ``ControlNetApplyAdvanced``), T5 tokens, pooled CLIP-L and guidance, one row per image.
    Entries the conditioning lacks are left out (the record then serves models that do not need them)."""
    positive = getattr(guider, "original_conds", {}).get("positive") or [{}]
    first = positive[0]
    found = {"context": first.get("cross_attn"), "pooled": first.get("pooled_output"),
             "hint": getattr(first.get("control"), "cond_hint_original", None)}
    out = {}
    for name, value in found.items():
        if torch.is_tensor(value):
            value = value.detach().float().cpu()
            out[name] = value.expand(batch, *value.shape[1:]) if value.shape[0] == 1 else value[:batch]
    if first.get("guidance") is not None:
        out["guidance"] = torch.full((batch,), float(first["guidance"]))
    return out
