"""Writing and reading the small safetensors files TrajIR exchanges (branches, prompt embeddings): atomic writes,
a ``trajir_kind`` tag in the metadata, and errors that name the file."""
import json
import os

import torch
from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file


def write_tagged(path, tensors, kind, metadata=None, overwrite=False):
    """Write ``tensors`` to ``path`` atomically (temp file, then rename) with ``trajir_kind = kind``.

    An existing file is never replaced unless ``overwrite`` is True.
    """
    path = os.fspath(path)
    if os.path.exists(path) and not overwrite:
        raise FileExistsError(f"{path} exists already; choose another name or allow overwriting")
    meta = {"trajir_kind": kind}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()})
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    tmp = f"{path}.tmp{os.getpid()}"
    try:
        save_file(tensors, tmp, metadata=meta)
        os.replace(tmp, path)
    finally:
        if os.path.exists(tmp):
            os.remove(tmp)
    return path


def read_tagged(path, kind):
    """``(tensors, metadata)`` of a file written by ``write_tagged`` with the same ``kind``."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise FileNotFoundError(f"file not found: {path}")
    try:
        with safe_open(path, "pt") as f:
            meta = dict(f.metadata() or {})
            tensors = {k: f.get_tensor(k) for k in f.keys()}
    except (SafetensorError, OSError, ValueError) as e:
        raise ValueError(f"{path} is not a readable safetensors file ({e})") from e
    if meta.get("trajir_kind") != kind:
        raise ValueError(f"{path} holds {meta.get('trajir_kind')!r}, expected a TrajIR {kind!r} file")
    return tensors, meta


def require_keys(path, tensors, keys):
    missing = [k for k in keys if k not in tensors]
    if missing:
        raise ValueError(f"{path} lacks the tensors {missing}")


def as_float(value):
    return float(value.item()) if torch.is_tensor(value) else float(value)
