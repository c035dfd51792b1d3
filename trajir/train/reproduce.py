"""The CPU-scale reproduction of the paper's Table XII: one command trains and evaluates, for one task,

pretrained (K NFE) -> RL-aligned (K NFE) -> distilled students (1 and 2 NFE) from the pretrained model
("distillation only") and from the RL model ("RL + distillation"), then prints PSNR / SSIM (and LPIPS when its
weights are present) on the held-out photos. Every phase resumes from its checkpoints and a finished phase is
skipped, so an interrupted reproduction continues where it stopped.
"""
import json
import os
import time

from ..rewards import available
from ..safefiles import write_text
from .analysis import analyze_cost, evaluate_file
from .config import Config
from .loop import train


def phases(cfg):
    """``(name, overrides, export file)`` in order; later phases start from earlier exports."""
    out = cfg["run.out_dir"]
    f = {name: os.path.join(out, name, "model.safetensors")
         for name in ("pretrained", "rl", "distill_1", "distill_2", "rl_distill_1", "rl_distill_2")}
    common = {"run.export": "model.safetensors"}
    distill = {"run.stage": "distill", "run.max_steps": cfg["reproduce.distill_steps"],
               "optim.lr": cfg["reproduce.distill_lr"], "optim.warmup_steps": 0}
    return [
        ("pretrained", {"run.stage": "pretrain"}),
        ("rl", {"run.stage": "rl", "run.init": f["pretrained"], "run.max_steps": cfg["reproduce.rl_steps"],
                "optim.lr": cfg["reproduce.rl_lr"], "optim.warmup_steps": 0, "optim.schedule": "constant"}),
        ("distill_1", {**distill, "run.init": f["pretrained"], "distill.student_steps": 1}),
        ("distill_2", {**distill, "run.init": f["pretrained"], "distill.student_steps": 2}),
        ("rl_distill_1", {**distill, "run.init": f["rl"], "distill.student_steps": 1}),
        ("rl_distill_2", {**distill, "run.init": f["rl"], "distill.student_steps": 2}),
    ], f, common


ROWS = [("Baseline (pretrained)", "pretrained"), ("RL", "rl"), ("Distillation", "distill_2"),
        ("Distillation", "distill_1"), ("RL + Distillation", "rl_distill_2"), ("RL + Distillation", "rl_distill_1")]


def reproduce(cfg, log=print):
    """Run every phase, evaluate every model, write ``results.json`` and ``results.md``; return the rows."""
    steps, files, common = phases(cfg)
    timings = {}
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
        if train(phase, resume=resume) != "done":
            raise SystemExit(f"[reproduce] stopped during {name}; run the same command again to continue")
        timings[name] = time.time() - start
    metrics = ["psnr", "ssim"] + (["lpips"] if "lpips" in available() else [])
    rows = []
    for label, name in ROWS:
        result = evaluate_file(files[name], cfg, metrics, draws=cfg["reproduce.eval_draws"])
        rows.append({"method": label, "model": name, **result})
        log(f"[reproduce] {name}: " + ", ".join(f"{k} {v:.4f}" for k, v in result.items() if k != "nfe"))
    cost = analyze_cost(Config({**cfg, "run.init": files["rl"]}), os.path.join(cfg["run.out_dir"], "cost_rl.png"))
    summary = {"task": cfg["data.task"], "seed": cfg["run.seed"], "rows": rows, "timings_s": timings,
               "cost_best_paths": cost["best_paths"]}
    write_text(os.path.join(cfg["run.out_dir"], "results.json"), json.dumps(summary, indent=1))
    table = markdown_table(rows, metrics)
    write_text(os.path.join(cfg["run.out_dir"], "results.md"), table + "\n")
    log(table)
    return rows


def markdown_table(rows, metrics):
    head = "| method | NFE | " + " | ".join(m.upper() for m in metrics) + " |"
    lines = [head, "|" + "---|" * (2 + len(metrics))]
    for r in rows:
        lines.append(f"| {r['method']} | {r['nfe']} | " + " | ".join(f"{r[m]:.4f}" if m != "psnr" else f"{r[m]:.2f}"
                                                                      for m in metrics) + " |")
    return "\n".join(lines)
