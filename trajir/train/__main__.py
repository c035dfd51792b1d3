"""``python -m trajir.train CONFIG.toml [--set key=value ...] [--resume latest|PATH] [--print-config]``

CONFIG is a TOML file, or the name of a shipped config (``python -m trajir.train --list-configs``).
Distributed: ``torchrun --nproc_per_node=N -m trajir.train CONFIG.toml``.

Analyses (same CONFIG and --set; models are exported compact-model files):
  python -m trajir.train reproduce CONFIG          pretrain -> RL -> distill, evaluate, print Table XII
  python -m trajir.train evaluate CONFIG MODEL...  held-out PSNR / SSIM with 95 % intervals; later models are
                                                   also compared with the first on the same draws (paired)
  python -m trajir.train compare-seeds CONFIG --pair A1 B1 --pair A2 B2 ...   recipe A against recipe B over
                                                   training seeds (one pair of exported models per seed): per
                                                   seed the paired difference, then their mean with a Student-t
                                                   interval over the seeds
  python -m trajir.train diagnose-rl CONFIG MODEL... [--out d.json]   Best-of-N win rate, target deviation vs the
                                                   GT and reward-ascent directions over N, branch step, eta, scale
  python -m trajir.train diagnose-rl CONFIG MODEL... --gradients        the RL gradient against the exact one, and
                                                   whether the exact one improves held-apart samples
  python -m trajir.train analyze-cost CONFIG --set run.init=TEACHER [--out cost.png]   (Fig. 2)
  python -m trajir.train plot-trajectories CONFIG MODEL... [--out traj.png]             (Fig. 7)
"""
import argparse
import os
import pathlib
import sys

from .config import load_config, valid_keys

CONFIG_DIR = pathlib.Path(__file__).resolve().parent / "configs"


def shipped_configs():
    return sorted(p.name for p in CONFIG_DIR.glob("*.toml"))


def resolve_config(name):
    """A path as given, or a shipped config by file name (with or without ``.toml``)."""
    if os.path.isfile(name):
        return name
    for candidate in (CONFIG_DIR / name, CONFIG_DIR / f"{name}.toml"):
        if candidate.is_file():
            return str(candidate)
    raise SystemExit(f"trajir.train: config {name!r} not found; give a TOML file or one of: "
                     f"{', '.join(shipped_configs())}")


COMMANDS = ("reproduce", "evaluate", "compare-seeds", "diagnose-rl", "analyze-cost", "plot-trajectories")


def parser():
    p = argparse.ArgumentParser(prog="python -m trajir.train", description=__doc__,
                                formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("config", nargs="?", help="TOML file or shipped config name")
    p.add_argument("models", nargs="*", help="exported models (evaluate, plot-trajectories)")
    p.add_argument("--pair", nargs=2, action="append", default=[], metavar=("A", "B"),
                   help="compare-seeds: the models of recipe A and recipe B trained with one seed (repeat per seed)")
    p.add_argument("--out", help="output PNG (analyze-cost, plot-trajectories) or JSON (diagnose-rl)")
    p.add_argument("--set", dest="overrides", action="append", default=[], metavar="KEY=VALUE",
                   help="override a config key (repeatable), e.g. --set optim.lr=1e-4")
    p.add_argument("--resume", metavar="latest|PATH", help="continue from the newest checkpoint or a folder")
    p.add_argument("--allow-config-change", action="store_true",
                   help="let --resume change training-relevant keys (optim.*, data.*, model.*, ...); without it a "
                        "resume whose config differs from the checkpoint's is refused")
    p.add_argument("--gradients", action="store_true",
                   help="diagnose-rl: compare the RL loss's gradient with the exact reward gradient in parameter space")
    p.add_argument("--print-config", action="store_true", help="print the resolved config and exit")
    p.add_argument("--list-configs", action="store_true", help="list the shipped configs and exit")
    p.add_argument("--list-keys", action="store_true", help="list every config key and exit")
    return p


def main(argv=None):
    argv = list(sys.argv[1:] if argv is None else argv)
    command = argv.pop(0) if argv and argv[0] in COMMANDS else None
    args = parser().parse_args(argv)
    if args.list_configs:
        print("\n".join(shipped_configs()))
        return 0
    if args.list_keys:
        print("\n".join(valid_keys()))
        return 0
    if args.config is None:
        parser().print_help()
        return 2
    try:
        cfg = load_config(resolve_config(args.config), args.overrides)
    except ValueError as e:
        raise SystemExit(f"trajir.train: {e}") from None
    if args.print_config:
        print(cfg.to_toml())
        return 0
    from .loop import TrainingDiverged, train

    try:
        if command is not None:
            return run_command(command, cfg, args)
        status = train(cfg, resume=args.resume, allow_config_change=args.allow_config_change)
    except (ValueError, FileNotFoundError, TrainingDiverged) as e:  # bad input and divergence: the message says it
        raise SystemExit(f"trajir.train: {e}") from None
    return 0 if status == "done" else 130


def run_command(command, cfg, args):
    from . import analysis

    if command == "reproduce":
        from .reproduce import reproduce

        reproduce(cfg, allow_config_change=args.allow_config_change)
    elif command == "evaluate":
        if not args.models:
            raise SystemExit("trajir.train evaluate: name at least one exported model file")
        from .evaluation import describe, evaluate_models, report

        labels = {}
        for i, path in enumerate(args.models):
            labels[path if path not in labels else f"{path} (#{i + 1})"] = path
        result = evaluate_models(labels, cfg)
        print(f"held-out: {describe(result['units'])}")
        print(report(result, ["psnr", "ssim"], list(labels), reference=args.models[0] if len(labels) > 1 else None))
    elif command == "compare-seeds":
        if len(args.pair) < 2:
            raise SystemExit("trajir.train compare-seeds: give --pair A B once per training seed, at least twice")
        from .evaluation import describe, evaluate_models
        from .seeds import seed_report

        result = evaluate_models({path: path for pair in args.pair for path in pair}, cfg)
        print(f"held-out: {describe(result['units'])}")
        print(seed_report(result, [tuple(pair) for pair in args.pair]))
    elif command == "diagnose-rl":
        if not args.models:
            raise SystemExit("trajir.train diagnose-rl: name at least one exported model file")
        import json

        if args.gradients:
            from .gradient_check import check as diagnose
            from .gradient_check import markdown
        else:
            from .diagnosis import diagnose, markdown

        results = {}
        for path in args.models:
            results[path] = diagnose(cfg, path)
            print(f"{path}:\n{markdown(results[path])}")
        if args.out:
            with open(args.out, "w") as f:
                json.dump(results, f, indent=1)
            print(f"wrote {args.out}")
    elif command == "analyze-cost":
        out = args.out or os.path.join(cfg["run.out_dir"], "cost.png")
        result = analysis.analyze_cost(cfg, out)
        for m, best in result["best_paths"].items():
            print(f"{m} jump(s): path {best['path']}, cost {best['cost']:.4f}")
        print(f"wrote {out}")
    else:
        if not args.models:
            raise SystemExit("trajir.train plot-trajectories: name the exported models to compare")
        out = args.out or os.path.join(cfg["run.out_dir"], "trajectories.png")
        analysis.trajectories(cfg, args.models, out)
        print(f"wrote {out}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
