"""Composite rewards: a weighted mix of registered metrics (docs/equations.md §5).

``Reward(weights)(images, reference)`` is always the weighted mean of the *normalised* scores,
``sum_i w_i n_i(s_i) / sum_i w_i`` -- also for a single metric, so every reward reads "about 0..1, higher is
better" and one Best-of-N rule fits all. A single metric's ranking is unchanged by its normaliser wherever that is
strictly monotone (PSNR/50 for ``Reward.preset("psnr")``, the task-specific reward); the raw units (dB, ...) are in
:meth:`Reward.details` and :meth:`Reward.table`.

Presets:
- ``"psnr"``: PSNR alone, the reward of the task-specific models.
- ``"fluxir-unified"``: the FLUX-IR unified reward, the mean of ``1 - LPIPS``, ``clip(1 - NIQE/10, 0, 1)``,
  ``MUSIQ/100`` and ``CLIPIQA`` (the normalisation constants are our reading, docs/equations.md §10).
"""
import math

from ..checks import parse_weights
from .registry import METRICS, get_metric

PRESETS = {
    "psnr": {"psnr": 1.0},
    "fluxir-unified": {"lpips": 1.0, "niqe": 1.0, "musiq": 1.0, "clipiqa": 1.0},
}


class Reward:
    """A configured scorer: ``weights`` maps metric names to non-negative weights (not all zero).

    ``iqa_dir``: the weight folder of the learned metrics (default: ``$TRAJIR_IQA_DIR`` or the registered one).
    ``options``: per-metric keyword options, e.g. ``{"niqe": {"color_space": "ycbcr"}}``.
    """

    def __init__(self, weights, iqa_dir=None, options=None):
        if not isinstance(weights, dict) or not weights:
            raise ValueError(f"weights must be a non-empty dict of metric name -> weight, got {weights!r}")
        self.weights = {}
        for name, weight in weights.items():
            get_metric(name)
            if isinstance(weight, bool) or not isinstance(weight, (int, float)) or not math.isfinite(weight) \
                    or weight < 0:
                raise ValueError(f"weight of {name!r} is {weight!r}; expected a finite number >= 0")
            if weight > 0:
                self.weights[name] = float(weight)
        if not self.weights:
            raise ValueError(f"weights are all zero ({weights}); expected at least one positive weight")
        options = dict(options or {})
        for name, opts in options.items():
            if name not in self.weights:
                raise ValueError(f"options given for {name!r}, which has no positive weight in {sorted(self.weights)}")
            unknown = sorted(set(opts) - set(get_metric(name).options))
            if unknown:
                raise ValueError(f"unknown option(s) {unknown} for metric {name!r}; it accepts "
                                 f"{list(get_metric(name).options) or 'no options'}")
        self.options = {name: dict(options.get(name, {})) for name in self.weights}
        for name, opts in self.options.items():
            if iqa_dir is not None and "iqa_dir" in get_metric(name).options:
                opts.setdefault("iqa_dir", iqa_dir)

    @classmethod
    def preset(cls, name, iqa_dir=None, options=None):
        """One of :data:`PRESETS` ("psnr", "fluxir-unified")."""
        if name not in PRESETS:
            raise ValueError(f"unknown reward preset {name!r}; expected one of {sorted(PRESETS)}")
        return cls(PRESETS[name], iqa_dir=iqa_dir, options=options)

    @classmethod
    def from_spec(cls, spec, what="reward", mix=False, iqa_dir=None):
        """The reward a text names: a preset (``psnr``, ``fluxir-unified``), one metric (``niqe``), or a weighted
        mix ``"lpips=1, niqe=0.5"`` (``trajir.checks.parse_weights``). The one parser of reward texts: the
        trainer's ``rl.reward`` and the Reward Scorer node's selection.

        ``what`` names the input in errors; ``mix=True`` accepts only the mix form.
        """
        text = str(spec).strip()
        if mix or "=" in text:
            weights = parse_weights(text, what)
            unknown = sorted(set(weights) - set(METRICS))
            if unknown:
                raise ValueError(f"unknown metric(s) {unknown} in {what}; known metrics: {sorted(METRICS)}")
            if not any(weights.values()):
                raise ValueError(f"{what} {weights} are all zero; give at least one metric a positive weight")
            return cls(weights, iqa_dir=iqa_dir)
        if not text:
            raise ValueError(f"{what} is empty; give a preset ({', '.join(sorted(PRESETS))}), a metric or "
                             "name=weight pairs")
        if text in PRESETS:
            return cls.preset(text, iqa_dir=iqa_dir)
        return cls({text: 1.0}, iqa_dir=iqa_dir)

    @property
    def needs_reference(self):
        """Whether any weighted metric is full-reference."""
        return any(get_metric(name).full_reference for name in self.weights)

    def details(self, images, reference=None):
        """Raw per-metric scores ``{name: [B] float32}`` in each metric's own units."""
        if self.needs_reference and reference is None:
            names = [n for n in self.weights if get_metric(n).full_reference]
            raise ValueError(f"this reward uses full-reference metric(s) {names}: pass reference, a [B, 3, H, W] "
                             "batch shaped like images")
        out = {}
        for name, opts in self.options.items():
            metric = get_metric(name)
            out[name] = metric(images, reference if metric.full_reference else None,
                               **{**dict(metric.mix_options), **opts})
        return out

    def combine(self, details):
        """The reward ``[B]`` from raw scores as returned by :meth:`details`."""
        total = sum(self.weights.values())
        return sum(w * get_metric(n).normalise(details[n]) for n, w in self.weights.items()) / total

    def __call__(self, images, reference=None):
        """The reward ``[B]`` float32: the weighted mean of the normalised metric scores."""
        return self.combine(self.details(images, reference))

    def format_table(self, details):
        """A fixed-width text table: one row per image, the raw score of every metric, then the reward."""
        rewards = self.combine(details).tolist()
        names = list(self.weights)
        headers = ["image"] + [f"{n} ({get_metric(n).units})" if get_metric(n).units else n for n in names] + ["reward"]
        columns = {n: details[n].tolist() for n in names}
        rows = [[str(i)] + [f"{columns[n][i]:.4f}" for n in names] + [f"{rewards[i]:.4f}"]
                for i in range(len(rewards))]
        widths = [max(len(h), *(len(r[j]) for r in rows)) for j, h in enumerate(headers)]
        return "\n".join("  ".join(c.rjust(w) for c, w in zip(cells, widths)) for cells in [headers] + rows)

    def table(self, images, reference=None):
        """:meth:`format_table` of the scores of ``images`` (for the ComfyUI Reward Scorer node)."""
        return self.format_table(self.details(images, reference))

    def __repr__(self):
        return f"Reward({self.weights})"
