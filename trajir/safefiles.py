"""Writing files atomically with ordinary permissions, and the small tagged safetensors files TrajIR exchanges
(branch records, prompt embeddings, the modulation network).

Every file TrajIR writes goes through ``atomic_path``: the bytes go to a temporary file in the target's folder,
which is renamed over the target only once it is complete, so a reader (or a crash) never sees half a file. The
file gets the permissions any new file of the process gets (0o666 less the umask, 0o644 usually), as an image
editor's would; ``tempfile.mkstemp`` and safetensors' own writer would leave 0o600.
Tagged files carry a ``trajir_kind`` in their metadata, and reading one back names the file in every error.
"""
import contextlib
import json
import os
import secrets
import stat

from safetensors import SafetensorError, safe_open
from safetensors.torch import save_file


@contextlib.contextmanager
def atomic_path(path, overwrite=True):
    """A temporary path in ``path``'s folder (created if missing) to write to; renamed onto ``path`` when the block
    completes, removed when it raises. With ``overwrite=False`` an existing ``path`` is refused.

    The temporary file exists already (empty), created with the process umask, and that mode is restored before
    the rename whatever the writer did to it."""
    path = os.fspath(path)
    if not overwrite and os.path.exists(path):
        raise FileExistsError(f"{path} exists already; choose another name or allow overwriting")
    folder, name = os.path.split(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    while True:
        tmp = os.path.join(folder, f".{name}.{os.getpid()}.{secrets.token_hex(4)}.tmp")
        try:
            fd = os.open(tmp, os.O_WRONLY | os.O_CREAT | os.O_EXCL, 0o666)
            break
        except FileExistsError:
            continue
    mode = stat.S_IMODE(os.fstat(fd).st_mode)
    os.close(fd)
    try:
        yield tmp
        os.chmod(tmp, mode)
        os.replace(tmp, path)
    finally:
        if os.path.lexists(tmp):
            os.remove(tmp)


def write_safetensors(path, tensors, metadata=None, overwrite=True):
    """``tensors`` (moved to the CPU, made contiguous) and string ``metadata`` as a safetensors file, atomically."""
    tensors = {k: v.detach().cpu().contiguous() for k, v in tensors.items()}
    with atomic_path(path, overwrite) as tmp:
        save_file(tensors, tmp, metadata=metadata)
    return path


def write_text(path, text):
    """``text`` as a UTF-8 file, atomically."""
    with atomic_path(path) as tmp:
        with open(tmp, "w", encoding="utf-8") as f:
            f.write(text)
    return path


def write_tagged(path, tensors, kind, metadata=None, overwrite=False):
    """Write ``tensors`` to ``path`` atomically with ``trajir_kind = kind``; non-string metadata values are stored
    as JSON. An existing file is never replaced unless ``overwrite`` is True."""
    meta = {"trajir_kind": kind}
    meta.update({k: v if isinstance(v, str) else json.dumps(v) for k, v in (metadata or {}).items()})
    return write_safetensors(os.fspath(path), tensors, meta, overwrite)


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
