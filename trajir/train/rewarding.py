"""The reward of a training config: ``rl.reward`` is a preset (``psnr``, ``fluxir-unified``), one metric, or a
weighted mix ``"lpips:1,niqe:0.5"`` (trajir.rewards)."""
from ..rewards import Reward


def make_reward(spec):
    spec = spec.strip()
    if ":" not in spec and "," not in spec:
        try:
            return Reward.preset(spec)
        except ValueError:
            return Reward({spec: 1.0})
    weights = {}
    for item in (s.strip() for s in spec.split(",") if s.strip()):
        name, _, weight = item.partition(":")
        try:
            weights[name.strip()] = float(weight) if weight else 1.0
        except ValueError:
            raise ValueError(f"rl.reward: weight of {name!r} must be a number, got {weight!r}") from None
    return Reward(weights)
