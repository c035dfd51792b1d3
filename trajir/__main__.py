"""``python -m trajir``: lists the command-line tools of the package."""
import argparse
import importlib
import sys

# name -> (module run with ``python -m``, one-line description)
SUBCOMMANDS = {
    "restore": ("trajir.restore", "restore images with a shipped or trained compact model"),
    "train": ("trajir.train", "train, align (RL), distill, evaluate and analyse restorers"),
    "bench": ("trajir.bench", "benchmarks that print speed ratios side by side"),
}


def main(argv=None):
    parser = argparse.ArgumentParser(
        prog="python -m trajir",
        description="TrajIR command-line tools. Run `python -m trajir.<name> --help` for each one.",
        formatter_class=argparse.RawDescriptionHelpFormatter,
        epilog="subcommands:\n" + "\n".join(f"  {name:<10} {desc}" for name, (_, desc) in SUBCOMMANDS.items()),
    )
    parser.add_argument("command", nargs="?", choices=sorted(SUBCOMMANDS), help="the tool to run")
    parser.add_argument("args", nargs=argparse.REMAINDER, help="arguments passed to the tool")
    ns = parser.parse_args(argv)
    if ns.command is None:
        parser.print_help()
        return 0
    module = importlib.import_module(SUBCOMMANDS[ns.command][0])
    if hasattr(module, "__path__"):  # a package: its command line lives in __main__
        module = importlib.import_module(module.__name__ + ".__main__")
    return module.main(ns.args)


if __name__ == "__main__":
    sys.exit(main())
