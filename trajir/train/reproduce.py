"""The CPU-scale reproduction of the paper's Table XII: one command trains and evaluates, for one task,

pretrained (K NFE) -> RL-aligned (K NFE) and its same-compute controls (flow matching from the same model for as
many steps at the same learning rate, and for as long as the RL phase took) -> distilled students (1 and 2 NFE)
from the pretrained model ("distillation only") and from the RL model ("RL + distillation") -> the shipped
student (a 2-step student fine-tuned onto the GT), then scores every model and the task's classical baseline on
the same held-out units (``trajir.train.evaluation``): means with 95 % intervals, and paired differences for the
comparisons the paper's claims rest on. Every phase resumes from its checkpoints and a finished phase is skipped,
so an interrupted reproduction continues where it stopped; each phase's wall-clock is kept in its folder
(``seconds.txt``; a resumed phase counts its last run only) and reported.
"""
import json
import os
import time

from ..baselines import BASELINES
from ..rewards import available
from ..safefiles import write_text
from .analysis import analyze_cost
from .evaluation import describe, evaluate_models, format_interval, summary
from .config import Config
from .loop import train


def phases(cfg):
    """``([(name, overrides)], {name: export file}, common overrides)`` in order; later phases start from earlier
    exports. Every phase after pretraining keeps an EMA of ``reproduce.phase_ema``."""
    out = cfg["run.out_dir"]
    names = ("pretrained", "rl", "control", "control_time", "distill_1", "distill_2", "rl_distill_1", "rl_distill_2",
             "shipped")
    f = {name: os.path.join(out, name, "model.safetensors") for name in names}
    common = {"run.export": "model.safetensors"}
    after = {"optim.warmup_steps": 0, "model.ema_decay": cfg["reproduce.phase_ema"]}
    tune = {**after, "run.init": f["pretrained"], "run.max_steps": cfg["reproduce.rl_steps"],
            "optim.lr": cfg["reproduce.rl_lr"], "optim.schedule": "constant"}
    distill = {**after, "run.stage": "distill", "run.max_steps": cfg["reproduce.distill_steps"],
               "optim.lr": cfg["reproduce.distill_lr"]}
    steps = [
        ("pretrained", {"run.stage": "pretrain"}),
        ("rl", {**tune, "run.stage": "rl"}),
        ("control", {**tune, "run.stage": "pretrain"}),
    ]
    if cfg["reproduce.control_time_steps"]:
        steps.append(("control_time", {**tune, "run.stage": "pretrain",
                                       "run.max_steps": cfg["reproduce.control_time_steps"]}))
    steps += [
        ("distill_1", {**distill, "run.init": f["pretrained"], "distill.student_steps": 1}),
        ("distill_2", {**distill, "run.init": f["pretrained"], "distill.student_steps": 2}),
        ("rl_distill_1", {**distill, "run.init": f["rl"], "distill.student_steps": 1}),
        ("rl_distill_2", {**distill, "run.init": f["rl"], "distill.student_steps": 2}),
    ]
    if cfg["reproduce.ship_steps"]:
        start = cfg["reproduce.ship_start_index"]
        steps.append(("shipped", {**after, "run.stage": "distill", "run.init": f[cfg["reproduce.ship_from"]],
                                  "run.max_steps": cfg["reproduce.ship_steps"], "optim.lr": cfg["reproduce.ship_lr"],
                                  "distill.student_steps": 2, "distill.rho": 1.0,
                                  "sampling.colour": cfg["reproduce.ship_colour"],
                                  "distill.start_index": cfg["distill.start_index"] if start < 0 else start}))
    return steps, f, common


ROWS = [("Baseline (pretrained)", "pretrained"), ("Control: flow matching, same steps and lr", "control"),
        ("Control: flow matching, same wall-clock", "control_time"), ("RL", "rl"), ("Distillation", "distill_2"),
        ("Distillation", "distill_1"), ("RL + Distillation", "rl_distill_2"), ("RL + Distillation", "rl_distill_1"),
        ("Shipped: 2-step student fine-tuned onto the GT", "shipped")]
# the paired comparisons behind the paper's claims: (row, compared with); "baseline" is the task's classical one
COMPARISONS = [("rl", "pretrained"), ("rl", "control"), ("rl", "control_time"), ("control", "pretrained"),
               ("control_time", "pretrained"), ("rl_distill_2", "distill_2"), ("rl_distill_1", "distill_1"),
               ("rl_distill_1", "pretrained"), ("distill_2", "pretrained"), ("shipped", "baseline")]


def reproduce(cfg, log=print, allow_config_change=False):
    """Run every phase, evaluate every model, write ``results.json`` and ``results.md``; return the rows."""
    steps, files, common = phases(cfg)
    for name, overrides in steps:
        phase = Config(cfg)
        phase.update(common)
        phase.update(overrides)
        phase["run.out_dir"] = os.path.join(cfg["run.out_dir"], name)
        if os.path.isfile(files[name]):
            log(f"[reproduce] {name}: done already ({files[name]})")
            continue
        resume = "latest" if os.path.isdir(os.path.join(phase["run.out_dir"], "checkpoints")) else None
        log(f"[reproduce] {name}: {phase['run.stage']} for {phase['run.max_steps']} steps"
            + (" (resuming)" if resume else ""))
        start = time.time()
        if train(phase, resume=resume, allow_config_change=allow_config_change) != "done":
            raise SystemExit(f"[reproduce] stopped during {name}; run the same command again to continue")
        write_text(_seconds_file(phase["run.out_dir"]), f"{time.time() - start:.1f}\n")
    timings = {name: _seconds(os.path.join(cfg["run.out_dir"], name)) for name, _ in steps}
    metrics = ["psnr", "ssim"] + (["lpips"] if "lpips" in available() else [])
    baseline = BASELINES.get(cfg["data.task"])
    ran = [name for name, _ in steps]
    result = evaluate_models({name: files[name] for _, name in ROWS if name in ran}, cfg, metrics,
                             baselines={baseline[0]: baseline[1]} if baseline else None)
    log(f"[reproduce] evaluated on {describe(result['units'])}")
    rows = []
    shown = [("Degraded input", "degraded input")] + ([("Classical baseline", baseline[0])] if baseline else [])
    for label, name in shown + [(label, name) for label, name in ROWS if name in ran]:
        if name == "shipped" and cfg["reproduce.ship_colour"]:
            label += f" (colour step: {cfg['reproduce.ship_colour']})"
        row = {"method": label, "model": name, "nfe": result["nfe"][name]}
        for m in metrics:
            stats = summary(result, m, name)
            row.update({m: stats["mean"], f"{m}_lo": stats["lo"], f"{m}_hi": stats["hi"]})
        rows.append(row)
    comparisons = []
    for name, ref in COMPARISONS:
        ref = baseline[0] if ref == "baseline" and baseline else ref
        if name not in result["scores"] or ref not in result["scores"]:
            continue
        entry = {"model": name, "reference": ref}
        for m in metrics:
            d = summary(result, m, name, reference=ref)["diff"]
            entry.update({f"d_{m}": d["mean"], f"d_{m}_lo": d["lo"], f"d_{m}_hi": d["hi"], f"p_{m}_le_0": d["p_le_0"]})
        comparisons.append(entry)
    cost = analyze_cost(Config({**cfg, "run.init": files["rl"]}), os.path.join(cfg["run.out_dir"], "cost_rl.png"))
    summary_json = {"task": cfg["data.task"], "seed": cfg["run.seed"], "rows": rows, "comparisons": comparisons,
                    "units": describe(result["units"]), "timings_s": timings, "cost_best_paths": cost["best_paths"]}
    write_text(os.path.join(cfg["run.out_dir"], "results.json"), json.dumps(summary_json, indent=1))
    table = markdown_table(rows, metrics) + "\n\n" + comparison_table(comparisons, metrics)
    clock = ", ".join(f"{name} {seconds / 60:.1f} min" for name, seconds in timings.items() if seconds)
    write_text(os.path.join(cfg["run.out_dir"], "results.md"),
               f"Held-out: {describe(result['units'])}\n\nWall-clock per phase: {clock}\n\n{table}\n")
    log(table)
    return rows


def _seconds_file(folder):
    return os.path.join(folder, "seconds.txt")


def _seconds(folder):
    """The wall-clock the phase in ``folder`` took so far (0 if it never ran or the file is unreadable)."""
    try:
        with open(_seconds_file(folder)) as f:
            return float(f.read())
    except (OSError, ValueError):
        return 0.0


def markdown_table(rows, metrics):
    """``| method | NFE | PSNR [95 %] | ... |`` with each mean's interval."""
    head = "| method | model | NFE | " + " | ".join(f"{m.upper()} [95 %]" for m in metrics) + " |"
    lines = [head, "|" + "---|" * (3 + len(metrics))]
    for r in rows:
        cells = [format_interval(r[m], r[m + "_lo"], r[m + "_hi"], m) for m in metrics]
        lines.append(f"| {r['method']} | {r['model']} | {r['nfe']} | " + " | ".join(cells) + " |")
    return "\n".join(lines)


def comparison_table(comparisons, metrics):
    """``| model | compared with | ΔPSNR [95 %] | ... | P(ΔPSNR <= 0) |``: paired differences on the same units."""
    head = "| model | compared with | " + " | ".join(f"Δ{m.upper()} [95 %]" for m in metrics) + " | P(ΔPSNR ≤ 0) |"
    lines = [head, "|" + "---|" * (3 + len(metrics))]
    for c in comparisons:
        cells = [format_interval(c["d_" + m], c["d_" + m + "_lo"], c["d_" + m + "_hi"], m, signed=True)
                 for m in metrics]
        lines.append(f"| {c['model']} | {c['reference']} | " + " | ".join(cells) + f" | {c['p_psnr_le_0']:.3f} |")
    return "\n".join(lines)
