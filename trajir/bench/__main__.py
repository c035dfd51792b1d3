"""``python -m trajir.bench NAME [options]``: run one benchmark (``--help`` lists them)."""
import argparse
import importlib
import sys

from . import BENCHMARKS


def main(argv=None):
    argv = sys.argv[1:] if argv is None else list(argv)
    if not argv or argv[0] in ("-h", "--help") or argv[0] not in BENCHMARKS:
        parser = argparse.ArgumentParser(
            prog="python -m trajir.bench",
            description="Benchmarks that print measurements side by side in one run.",
            formatter_class=argparse.RawDescriptionHelpFormatter,
            epilog="benchmarks:\n" + "\n".join(f"  {k:<10} {v}" for k, v in BENCHMARKS.items()),
        )
        parser.add_argument("name", choices=sorted(BENCHMARKS))
        parser.parse_args(argv[:1])  # prints help, or errors on an unknown name
        return 0
    module = importlib.import_module(f"{__package__}.{argv[0]}")
    return module.main(argv[1:])


if __name__ == "__main__":
    sys.exit(main())
