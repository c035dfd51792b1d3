"""Inputs the corpus cases share: photos, model files good and bad, a tiny trained run with checkpoints.

Everything is built on first use inside one session folder and reused; cases copy what they modify.
"""
import functools
import pathlib
import shutil
import struct

import torch
from safetensors import safe_open
from safetensors.torch import save_file

from trajir.compact import shipped_models
from trajir.data import read_image, sample_split, write_png

# the settings of tests/test_train_framework.py's tiny runs, as a config file for the command line
TINY_TOML = """
[run]
batch_size = 2
val_every = 0
log_every = 1
threads = 1
max_steps = 4
save_every = 2
keep_last = 3
[model]
preset = "tiny"
ema_decay = 0.9
[data]
crop = 32
val_crop = 32
[sampling]
steps = 4
"""


def case_folder(root, part, index):
    folder = pathlib.Path(root) / part / f"{index:03d}"
    folder.mkdir(parents=True)
    return folder


def header_length(path):
    """The safetensors header length: the first 8 bytes, little-endian."""
    with open(path, "rb") as f:
        return struct.unpack("<Q", f.read(8))[0]


def resave_with_header_length(src, dst, residue, modulus):
    """Re-save the safetensors file ``src`` as ``dst`` with a metadata note whose length makes the header length
    ``residue`` modulo ``modulus`` (tensors and other metadata unchanged). Returns the header length."""
    with safe_open(str(src), "pt") as f:
        metadata = dict(f.metadata() or {})
        tensors = {k: f.get_tensor(k) for k in f.keys()}
    note = ""
    for _ in range(64):
        save_file(tensors, str(dst), metadata={**metadata, "trajir_note": note})
        n = header_length(dst)
        if n % modulus == residue:
            return n
        note += "x" * ((residue - n) % modulus or 8)
    raise AssertionError(f"could not reach a header length of {residue} mod {modulus}")


class Shared:
    """Session resources, created on demand under ``root``."""

    def __init__(self, root):
        self.root = pathlib.Path(root) / "session"
        self.root.mkdir(parents=True, exist_ok=True)

    def _path(self, name):
        return self.root / name

    @functools.cache
    def photo(self, name="photo", height=40, width=56, which=0):
        """A crop of a held-out sample photo as a PNG."""
        path = self._path(f"{name}_{height}x{width}_{which}.png")
        _, held_out = sample_split()
        image = read_image(held_out[which % len(held_out)])
        write_png(path, image[:, 100:100 + height, 100:100 + width])
        return path

    @property
    def model(self):
        """The shipped low-light restorer."""
        return shipped_models()["lowlight"]

    @functools.cache
    def model_file(self, variant):
        """The shipped restorer changed by ``variant``; see the branches below."""
        path = self._path(f"model_{variant}.safetensors")
        src = self.model
        if variant in ("nan", "inf"):
            with safe_open(str(src), "pt") as f:
                metadata = dict(f.metadata() or {})
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            key = sorted(tensors)[len(tensors) // 2]
            tensors[key] = tensors[key].clone()
            tensors[key].view(-1)[0] = float(variant)
            save_file(tensors, str(path), metadata=metadata)
        elif variant == "no_recipe":
            with safe_open(str(src), "pt") as f:
                metadata = {k: v for k, v in (f.metadata() or {}).items() if k != "trajir_recipe"}
                tensors = {k: f.get_tensor(k) for k in f.keys()}
            save_file(tensors, str(path), metadata=metadata)
        elif variant == "truncated":
            data = src.read_bytes()
            path.write_bytes(data[: len(data) // 2])
        elif variant == "empty":
            path.write_bytes(b"")
        elif variant == "header_128":  # a header length of 128 mod 256: the first byte is 0x80
            resave_with_header_length(src, path, 128, 256)
        elif variant == "header_pk":  # the header length's first two bytes spell "PK"
            resave_with_header_length(src, path, 0x4B50, 0x10000)
        elif variant == "pickle_zip":
            torch.save({"w": torch.zeros(3)}, path)
        elif variant == "pickle_legacy":
            torch.save({"w": torch.zeros(3)}, path, _use_new_zipfile_serialization=False)
        elif variant == "lq_encoder":
            from trajir.models import AutoEncoder, AutoEncoderParams, LQEncoder, save
            save(LQEncoder.from_autoencoder(AutoEncoder(AutoEncoderParams.tiny(), seed=3)), path)
        else:
            raise KeyError(variant)
        return path

    @property
    def tiny_toml(self):
        path = self._path("tiny.toml")
        if not path.exists():
            path.write_text(TINY_TOML)
        return path

    @functools.cache
    def tiny_run(self):
        """A finished 4-step tiny run (checkpoints at steps 2 and 4, export, config.toml)."""
        from corpus import run_cli
        from trajir.train.__main__ import main

        out = self._path("tiny_run")
        result = run_cli(main, self.tiny_toml, "--set", f"run.out_dir={out}")
        assert result.code == 0, result.text[-2000:]
        return out

    def copy_run(self, dest):
        """A private copy of the tiny run in ``dest`` (cases change its checkpoints)."""
        dest = pathlib.Path(dest) / "run"
        shutil.copytree(self.tiny_run(), dest)
        return dest
