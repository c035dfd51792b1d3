"""TrajIR Reward Scorer: scores an IMAGE batch with ``trajir.rewards`` and hands the configured scorer
(TRAJIR_REWARD) to the Best-of-N node. Inside ComfyUI the learned metrics read their weights from
``models/iqa`` (registered by the pack); nothing is downloaded."""

from .comfy_bridge import image_to_bchw, iqa_dirs

PRESETS = ("fluxir-unified", "psnr")
CUSTOM = "custom"


def metric_choices():
    """The metric selection offered by the node: the presets, ``custom`` (weights), then every single metric."""
    from ..trajir import rewards

    singles = sorted(name for name in rewards.METRICS if name not in PRESETS)
    return list(PRESETS) + [CUSTOM] + singles


def parse_weights(text):
    """``"lpips=1, niqe=0.5"`` (commas, semicolons or new lines between pairs) as ``{"lpips": 1.0, "niqe": 0.5}``."""
    from ..trajir import rewards
    from ..trajir.checks import parse_weights as parse_pairs

    if not text.strip():
        raise ValueError("weights is empty: with metric 'custom' give name=weight pairs, e.g. 'lpips=1, niqe=0.5'")
    weights = parse_pairs(text, "weights")
    unknown = sorted(set(weights) - set(rewards.METRICS))
    if unknown:
        raise ValueError(f"unknown metric(s) {unknown} in weights; known metrics: {sorted(rewards.METRICS)}")
    if not any(weights.values()):
        raise ValueError(f"weights {weights} are all zero; give at least one metric a positive weight")
    return weights


def build_reward(metric, weights=""):
    """The configured ``trajir.rewards.Reward`` for the node's selection."""
    from ..trajir import rewards

    dirs = iqa_dirs()
    if dirs:  # inside ComfyUI: models/iqa (and any extra_model_paths entry for "iqa")
        rewards.set_default_iqa_dirs(dirs)
    if metric in PRESETS:
        return rewards.Reward.preset(metric)
    if metric == CUSTOM:
        return rewards.Reward(parse_weights(weights))
    if metric not in rewards.METRICS:
        raise ValueError(f"unknown metric {metric!r}; choose a preset {list(PRESETS)}, 'custom' or one of "
                         f"{sorted(rewards.METRICS)}")
    return rewards.Reward({metric: 1.0})


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
