"""TrajIR Reward Scorer: scores an IMAGE batch with ``trajir.rewards`` and hands the configured scorer
(TRAJIR_REWARD) to the Best-of-N node. Inside ComfyUI the learned metrics read their weights from
``models/iqa`` (registered by the pack); nothing is downloaded."""

from .comfy_bridge import image_to_bchw, iqa_dirs

CUSTOM = "custom"


def metric_choices():
    """The metric selection offered by the node: the presets, ``custom`` (weights), then every single metric."""
    from ..trajir import rewards

    presets = sorted(rewards.PRESETS)
    return presets + [CUSTOM] + sorted(name for name in rewards.METRICS if name not in presets)


def build_reward(metric, weights=""):
    """The configured ``trajir.rewards.Reward`` for the node's selection (``Reward.from_spec``)."""
    from ..trajir import rewards

    dirs = iqa_dirs()
    if dirs:  # inside ComfyUI: models/iqa (and any extra_model_paths entry for "iqa")
        rewards.set_default_iqa_dirs(dirs)
    if metric != CUSTOM:
        return rewards.Reward.from_spec(metric, "metric")
    if not weights.strip():
        raise ValueError("weights is empty: with metric 'custom' give name=weight pairs, e.g. 'lpips=1, niqe=0.5'")
    return rewards.Reward.from_spec(weights, "weights", mix=True)


class TrajIRRewardScorer:
    """Scores images with a reward metric or a weighted mix, and outputs the scorer for Best-of-N."""

    DESCRIPTION = ("Reward scoring for restoration: single metrics (PSNR, SSIM, NIQE, UCIQE, UIQM, LPIPS, MUSIQ, "
                   "CLIPIQA, MANIQA), the presets psnr and fluxir-unified (mean of normalised LPIPS, NIQE, MUSIQ, "
                   "CLIPIQA), or custom weights. Learned metrics read weights from models/iqa.")
    CATEGORY = "TrajIR/reward"
    RETURN_TYPES = ("FLOAT", "STRING", "TRAJIR_REWARD")
    RETURN_NAMES = ("mean_reward", "table", "reward")
    OUTPUT_TOOLTIPS = ("The reward averaged over the batch.",
                       "A per-image table of the reward and every metric's raw score.",
                       "The configured scorer, for TrajIR Best-of-N Trajectory Aligner.")
    OUTPUT_NODE = True
    FUNCTION = "score"

    @classmethod
    def INPUT_TYPES(cls):
        return {
            "required": {
                "images": ("IMAGE", {"tooltip": "The images to score."}),
                "metric": (metric_choices(), {"default": "fluxir-unified",
                           "tooltip": "A preset (psnr; fluxir-unified = mean of normalised LPIPS, NIQE, MUSIQ, "
                                      "CLIPIQA), custom (uses weights), or one metric."}),
                "weights": ("STRING", {"default": "", "multiline": False,
                                       "tooltip": "With metric 'custom': name=weight pairs, e.g. 'lpips=1, "
                                                  "niqe=0.5' (weighted mean of normalised scores)."}),
            },
            "optional": {
                "reference": ("IMAGE", {"tooltip": "Ground truth, needed by full-reference metrics (PSNR, SSIM, "
                                                   "LPIPS)."}),
            },
        }

    def score(self, images, metric, weights, reference=None):
        reward = build_reward(metric, weights)
        x = image_to_bchw("images", images)
        ref = None if reference is None else image_to_bchw("reference", reference)
        if ref is not None and ref.shape[0] == 1 and x.shape[0] > 1:
            ref = ref.expand(x.shape[0], -1, -1, -1)
        if reward.needs_reference and ref is None:
            raise ValueError(f"metric {metric!r} is full-reference; connect the ground truth to 'reference'")
        details = reward.details(x, ref)
        values, table = reward.combine(details), reward.format_table(details)
        mean = float(values.float().mean())
        return {"ui": {"text": [table]}, "result": (mean, table, reward)}
