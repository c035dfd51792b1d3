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


requires_comfyui = pytest.mark.skipif(
    comfyui_path() is None,
    reason="needs a ComfyUI checkout: set COMFYUI_PATH to a folder holding ComfyUI's main.py and comfy/",
)


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
