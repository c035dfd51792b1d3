"""The reward of a training config: ``rl.reward`` is a preset (``psnr``, ``fluxir-unified``), one metric, or a
weighted mix ``"lpips=1, niqe=0.5"`` (``Reward.from_spec``). ``rl.reward_fallback`` names the reward to use instead
when a learned metric of ``rl.reward`` cannot run here (pyiqa or its weight files missing); the choice is
reported."""
from ..rewards import Reward
from ..rewards.learned import iqa_dirs
from ..rewards.registry import get_metric


def unavailable_metrics(reward):
    """The metrics of ``reward`` that cannot run now (learned metrics without pyiqa or their weight files)."""
    return [name for name in reward.weights if not get_metric(name).is_available()]


def reward_from_config(cfg):
    """``(reward, spec, note)``: the reward to train with, the spec it was built from, and a line that says which
    was chosen and why (None when no fallback is configured).

    Without ``rl.reward_fallback`` a reward whose weights are missing is used as is, so its first call fails with
    the error naming the missing file.
    """
    spec, fallback = cfg["rl.reward"].strip(), cfg["rl.reward_fallback"].strip()
    reward = Reward.from_spec(spec, "rl.reward")
    if not fallback:
        return reward, spec, None
    backup = Reward.from_spec(fallback, "rl.reward_fallback")
    missing = unavailable_metrics(backup)
    if missing:
        raise ValueError(f"rl.reward_fallback = {fallback!r} must run without learned-metric weights, but "
                         f"{', '.join(missing)} cannot run here")
    missing = unavailable_metrics(reward)
    if not missing:
        return reward, spec, f"reward: rl.reward = {spec!r} (every metric of it can run here)"
    folders = ", ".join(str(d) for d in iqa_dirs()) or "no IQA weight folder set ($TRAJIR_IQA_DIR)"
    return backup, fallback, (f"reward: rl.reward = {spec!r} needs {', '.join(missing)}, which cannot run here "
                              f"(pyiqa or weight files missing; searched: {folders}); training with "
                              f"rl.reward_fallback = {fallback!r} instead")
