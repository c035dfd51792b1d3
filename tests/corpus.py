"""The bad-input and fault corpus: what a case is, the classifier that sorts its outcome, and the report.

A case is one input a careless or hostile user might give, or one fault (a corrupt checkpoint, a full disk), with
what must happen: a clear error (an exception of one of ``kinds``, or a command's non-zero exit, whose message
matches ``error``; the pattern names the input) or a correct result (``check`` passes on what the call returned).
``after`` checks what must (not) have happened around a clear error, e.g. that no work was done before it.

``classify`` runs a case under a time limit and sorts the outcome into

- ``clear``: the expected clear error, or the correct finite result;
- ``silent``: the call returned (a command exited 0) where it should have failed, its result is wrong, or it failed
  clearly but only after doing (or losing) what ``after`` says it must not;
- ``crash``: any other exception (a raw traceback, a message that does not name the input, a command that exits
  non-zero without saying why), or no answer within the time limit (a hang).

Four parts, one module each: ``corpus_cli`` (``python -m trajir.restore``), ``corpus_trainer``
(``python -m trajir.train``), ``corpus_nodes`` (the ComfyUI nodes with stand-in ComfyUI modules) and
``corpus_library`` (the ``trajir`` API). ``tests/test_corpus.py`` asserts that every case is clear;
``python tests/corpus.py`` prints the counts per part against whichever ``trajir`` the interpreter imports.
"""
import contextlib
import dataclasses
import io
import re
import signal
import sys
import threading
import traceback
from collections.abc import Callable

OUTCOMES = ("clear", "silent", "crash")


class Hang(BaseException):
    """Raised by the time limit; a BaseException so that no ``except Exception`` in the code under test eats it."""


@dataclasses.dataclass
class Case:
    id: str
    run: Callable                       # run(ctx) -> result; performs the input
    error: str = None                   # regex of the clear error (None: a result is expected)
    check: Callable = None              # check(result, ctx): asserts the result is correct
    after: Callable = None              # after(ctx): asserts the side effects around a clear error
    kinds: tuple = (ValueError,)        # exception types that count as a clear error
    limit: float = 60.0                 # seconds before the case counts as a hang
    skip: str = None                    # a reason to skip the case here (e.g. needs no CUDA)


@dataclasses.dataclass
class Outcome:
    label: str
    detail: str = ""


@dataclasses.dataclass
class Exit:
    """What a command-line ``main(argv)`` did: its exit code and everything it printed."""
    code: int
    text: str


@dataclasses.dataclass
class Context:
    """What a case may use: its own temporary folder, a monkeypatch, and resources shared by the session."""
    tmp: object
    monkeypatch: object
    shared: object


def run_cli(main, *argv):
    """Run ``main(argv)`` in-process as the shell would see it: an ``Exit``. A ``SystemExit`` becomes its code and
    message; any other exception propagates (in a shell it would be a traceback)."""
    out = io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
        try:
            code = main([str(a) for a in argv])
        except SystemExit as e:
            if isinstance(e.code, str):
                out.write(e.code + "\n")
                code = 1
            else:
                code = 0 if e.code is None else e.code
    return Exit(int(code or 0), out.getvalue())


@contextlib.contextmanager
def time_limit(seconds):
    """Raise ``Hang`` after ``seconds`` (only in the main thread, where signals are delivered)."""
    if threading.current_thread() is not threading.main_thread() or not hasattr(signal, "setitimer"):
        yield
        return

    def expire(signum, frame):
        raise Hang()

    previous = signal.signal(signal.SIGALRM, expire)
    signal.setitimer(signal.ITIMER_REAL, seconds)
    try:
        yield
    finally:
        signal.setitimer(signal.ITIMER_REAL, 0)
        signal.signal(signal.SIGALRM, previous)


def _message(error):
    return error.code if isinstance(error, SystemExit) and isinstance(error.code, str) else str(error)


def _short(text, n=300):
    text = " ".join(str(text).split())
    return text if len(text) <= n else text[: n - 3] + "..."


def _after(case, ctx, label_if_ok="clear"):
    if case.after is None:
        return Outcome(label_if_ok)
    try:
        case.after(ctx)
    except AssertionError as e:
        return Outcome("silent", f"clear error, but {_short(e) or 'its side effects are wrong'}")
    return Outcome(label_if_ok)


def classify(case, ctx):
    """Run ``case`` and sort what happened into clear / silent / crash (module docstring)."""
    try:
        with time_limit(case.limit):
            result = case.run(ctx)
    except Hang:
        return Outcome("crash", f"no answer within {case.limit:g} s (a hang)")
    except (Exception, SystemExit) as e:
        message = _message(e)
        if case.error is not None and isinstance(e, case.kinds) and re.search(case.error, message):
            return _after(case, ctx)
        frame = traceback.extract_tb(e.__traceback__)[-1]
        where = f"{frame.filename.rsplit('/', 1)[-1]}:{frame.lineno}"
        return Outcome("crash", f"{type(e).__name__} at {where}: {_short(message)}")
    if case.error is not None:
        if isinstance(result, Exit):
            if result.code == 0:
                return Outcome("silent", f"exit 0 where it should fail ({_short(result.text[-300:])})")
            if re.search(case.error, result.text):
                return _after(case, ctx)
            return Outcome("crash", f"exit {result.code} without the expected message: {_short(result.text[-400:])}")
        return Outcome("silent", f"returned {_short(repr(result), 120)} instead of failing with {case.error!r}")
    if case.check is not None:
        try:
            case.check(result, ctx)
        except AssertionError as e:
            return Outcome("silent", f"wrong result: {_short(e)}")
    return Outcome("clear")


# --- the report ---------------------------------------------------------------------------------------------------

PARTS = ("cli", "trainer", "nodes", "library")


def part_cases(part):
    module = __import__(f"corpus_{part}")
    return module.CASES


def report(parts=PARTS, verbose=True, out=sys.stdout):
    """Run every case of ``parts`` and print the counts per part (and each case that is not clear)."""
    import tempfile

    import pytest

    import corpus_shared

    totals = {}
    with tempfile.TemporaryDirectory(prefix="trajir_corpus_") as root:
        shared = corpus_shared.Shared(root)
        for part in parts:
            counts = dict.fromkeys(OUTCOMES, 0)
            for i, case in enumerate(part_cases(part)):
                if case.skip:
                    counts.setdefault("skipped", 0)
                    counts["skipped"] += 1
                    continue
                tmp = corpus_shared.case_folder(root, part, i)
                with pytest.MonkeyPatch.context() as mp:
                    outcome = classify(case, Context(tmp, mp, shared))
                counts[outcome.label] += 1
                if verbose and outcome.label != "clear":
                    print(f"  {part}/{case.id}: {outcome.label}: {outcome.detail}", file=out)
            totals[part] = counts
            print(f"{part}: " + ", ".join(f"{k} {v}" for k, v in counts.items()) +
                  f" (of {sum(counts.values())})", file=out, flush=True)
    return totals


if __name__ == "__main__":
    import os

    sys.path.insert(0, os.path.dirname(os.path.abspath(__file__)))
    import corpus  # the cases import this module by name: run the report from that copy, not from __main__

    chosen = [p for p in sys.argv[1:] if not p.startswith("-")] or PARTS
    corpus.report(chosen, verbose="-q" not in sys.argv)
