"""Shared test helpers: sample photos, importing the node pack without ComfyUI, the ComfyUI path."""
import importlib.util
import os
import pathlib
import sys

import pytest

REPO = pathlib.Path(__file__).resolve().parents[1]
PACK_NAME = "trajir_pack"


def load_pack():
    """Import the repository root as the ComfyUI pack package ``trajir_pack`` (as ComfyUI would)."""
    if PACK_NAME in sys.modules:
        return sys.modules[PACK_NAME]
    spec = importlib.util.spec_from_file_location(PACK_NAME, REPO / "__init__.py",
                                                  submodule_search_locations=[str(REPO)])
    module = importlib.util.module_from_spec(spec)
    sys.modules[PACK_NAME] = module
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="session")
def pack():
    return load_pack()


def comfyui_path():
    """The ComfyUI checkout named by $COMFYUI_PATH, or None."""
    path = os.environ.get("COMFYUI_PATH")
    if path and (pathlib.Path(path) / "comfy").is_dir():
        return pathlib.Path(path)
    return None


COMFYUI_REASON = "needs a ComfyUI checkout: set COMFYUI_PATH to a folder holding ComfyUI's main.py and comfy/"


# A test (or, as ``pytestmark``, a module) that needs a real ComfyUI: skipped without $COMFYUI_PATH, and a failure
# when it is skipped for any reason while $COMFYUI_PATH is set (see ``pytest_runtest_makereport``).
requires_comfyui = pytest.mark.comfyui


def pytest_collection_modifyitems(config, items):
    if comfyui_path() is None:
        skip = pytest.mark.skip(reason=COMFYUI_REASON)
        for item in items:
            if item.get_closest_marker("comfyui") is not None:
                item.add_marker(skip)


def pytest_configure(config):
    config.addinivalue_line("markers", "comfyui: needs the ComfyUI checkout named by $COMFYUI_PATH")
    config.addinivalue_line("markers", "browser: needs Chromium, node and playwright-core (headless frontend checks)")
    path = os.environ.get("COMFYUI_PATH")
    if path and comfyui_path() is None:
        raise pytest.UsageError(f"COMFYUI_PATH={path} is not a ComfyUI checkout (no comfy/ folder in it); "
                                "unset it to skip the ComfyUI tests")


def pytest_report_header(config):
    path = comfyui_path()
    if path is None:
        return f"ComfyUI: COMFYUI_PATH is not set, so the tests marked 'comfyui' are skipped ({COMFYUI_REASON})"
    return f"ComfyUI: {path} (a skipped 'comfyui' test counts as a failure)"


def _required_because(item):
    """Why ``item`` must not be skipped here, or None: $COMFYUI_PATH is set for a ``comfyui`` test, or
    $TRAJIR_REQUIRE_BROWSER=1 (CI installed Chromium and playwright-core) for a ``browser`` test."""
    if comfyui_path() is not None and item.get_closest_marker("comfyui") is not None:
        return f"COMFYUI_PATH={comfyui_path()} is set"
    if os.environ.get("TRAJIR_REQUIRE_BROWSER") == "1" and item.get_closest_marker("browser") is not None:
        return "TRAJIR_REQUIRE_BROWSER=1 is set"
    return None


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """A skipped test whose requirements the environment says it has is a failure: a silent skip must not pass
    as green."""
    outcome = yield
    report = outcome.get_result()
    why = _required_because(item) if report.skipped else None
    if why is not None:
        reason = report.longrepr[2] if isinstance(report.longrepr, tuple) else str(report.longrepr)
        report.outcome = "failed"
        report.longrepr = f"skipped although {why}: {reason}"


def sample_photo(name="astronaut", size=None):
    """A scikit-image sample photo as a float32 tensor [1, 3, H, W] in 0..1 (optionally resized)."""
    data = pytest.importorskip("skimage.data", reason="scikit-image provides the sample photos")
    import numpy as np
    import torch

    img = getattr(data, name)()
    if img.ndim == 2:
        img = np.stack([img] * 3, axis=-1)
    t = torch.from_numpy(np.ascontiguousarray(img[..., :3])).float().div(255).permute(2, 0, 1)[None]
    if size is not None:
        t = torch.nn.functional.interpolate(t, size=size, mode="bilinear", antialias=True, align_corners=False)
    return t.clamp(0, 1)


@pytest.fixture(scope="session")
def tiny_pretrained(tmp_path_factory):
    """A tiny compact model pretrained for a few steps by ``trajir.train`` (the start of later-stage tests)."""
    from test_train_framework import tiny_config
    from trajir.train.loop import train

    out = tmp_path_factory.mktemp("pretrained")
    cfg = tiny_config(out, "run.max_steps=30", "optim.lr=1e-3", "run.export=model.safetensors")
    assert train(cfg) == "done"
    return out / "model.safetensors"


@pytest.fixture(scope="session")
def comfy_server(tmp_path_factory):
    """One real ComfyUI server (``main.py --cpu``) for the whole session, its base folder a temporary one."""
    from comfy_harness import ComfyServer

    with ComfyServer(comfyui_path(), tmp_path_factory.mktemp("comfy_base")) as server:
        yield server


@pytest.fixture(scope="session")
def comfy_model_files(comfy_server):
    """The random-weight model files the FLUX workflows load (``tiny_model_files.py``), written once per session
    into the shared server's models folder (ComfyUI rereads a folder whose contents changed)."""
    from tiny_model_files import write_model_files

    return write_model_files(comfyui_path(), comfy_server.base / "models")
