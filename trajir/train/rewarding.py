"""The reward of a training config: ``rl.reward`` is a preset (``psnr``, ``fluxir-unified``), one metric, or a
weighted mix ``"lpips=1, niqe=0.5"`` (trajir.rewards)."""
from ..checks import parse_weights
from ..rewards import PRESETS, Reward


def make_reward(spec):
    spec = spec.strip()
    if "=" in spec:
        return Reward(parse_weights(spec, "rl.reward"))
    if spec in PRESETS:
        return Reward.preset(spec)
    return Reward({spec: 1.0})
