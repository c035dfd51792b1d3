"""The bad-input and fault corpus as tests: every case of every part must be clear (a clear error naming the input,
or the correct result); see tests/corpus.py for the classifier and ``python tests/corpus.py`` for the counts."""
import pytest

import corpus
import corpus_cli
import corpus_library
import corpus_nodes
import corpus_shared
import corpus_trainer


@pytest.fixture(scope="session")
def shared(tmp_path_factory):
    return corpus_shared.Shared(tmp_path_factory.mktemp("corpus"))


def _params(cases):
    return [pytest.param(c, id=c.id, marks=[pytest.mark.skip(reason=c.skip)] if c.skip else []) for c in cases]


def _assert_clear(case, tmp_path, monkeypatch, shared):
    outcome = corpus.classify(case, corpus.Context(tmp_path, monkeypatch, shared))
    assert outcome.label == "clear", f"{outcome.label}: {outcome.detail}"


@pytest.mark.parametrize("case", _params(corpus_cli.CASES))
def test_cli_corpus(case, tmp_path, monkeypatch, shared):
    _assert_clear(case, tmp_path, monkeypatch, shared)


@pytest.mark.parametrize("case", _params(corpus_trainer.CASES))
def test_trainer_corpus(case, tmp_path, monkeypatch, shared):
    _assert_clear(case, tmp_path, monkeypatch, shared)


@pytest.mark.parametrize("case", _params(corpus_nodes.CASES))
def test_nodes_corpus(case, tmp_path, monkeypatch, shared):
    _assert_clear(case, tmp_path, monkeypatch, shared)


@pytest.mark.parametrize("case", _params(corpus_library.CASES))
def test_library_corpus(case, tmp_path, monkeypatch, shared):
    _assert_clear(case, tmp_path, monkeypatch, shared)


def test_the_classifier_sorts_outcomes(tmp_path, monkeypatch):
    """clear / silent / crash on hand-made cases, so that a broken classifier cannot pass the corpus."""
    ctx = corpus.Context(tmp_path, monkeypatch, None)

    def refuse(ctx):
        raise ValueError("x must be finite")

    def raw(ctx):
        return {}["key"]

    def hang(ctx):
        while True:
            pass

    cases = [
        (corpus.Case("clear error", refuse, r"x must be finite"), "clear"),
        (corpus.Case("error not naming the input", refuse, r"y must be"), "crash"),
        (corpus.Case("raw exception", raw, r"key"), "crash"),
        (corpus.Case("returns instead of failing", lambda ctx: 1, r"x must"), "silent"),
        (corpus.Case("right result", lambda ctx: 2, check=lambda r, ctx: None), "clear"),
        (corpus.Case("wrong result", lambda ctx: 2, check=lambda r, ctx: (_ for _ in ()).throw(AssertionError())),
         "silent"),
        (corpus.Case("exit 0 where it should fail", lambda ctx: corpus.Exit(0, "ok"), r"bad"), "silent"),
        (corpus.Case("exit 1 with the message", lambda ctx: corpus.Exit(1, "x is bad"), r"x is bad"), "clear"),
        (corpus.Case("exit 1 without it", lambda ctx: corpus.Exit(1, "Traceback"), r"x is bad"), "crash"),
        (corpus.Case("clear but too late", refuse, r"x must", after=lambda ctx: (_ for _ in ()).throw(
            AssertionError("work done"))), "silent"),
        (corpus.Case("hang", hang, r"x", limit=0.2), "crash"),
    ]
    for case, label in cases:
        assert corpus.classify(case, ctx).label == label, case.id
    exit_ = corpus.run_cli(lambda argv: (_ for _ in ()).throw(SystemExit("tool: bad input")))
    assert exit_ == corpus.Exit(1, "tool: bad input\n")
