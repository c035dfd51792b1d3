"""Checkpoints: one folder per save, written atomically, holding everything a run needs to continue exactly.

A checkpoint folder ``checkpoints/step_00001000/`` holds ``tensors.safetensors`` (model, EMA, optimiser tensors,
RNG states) and ``state.json`` (step, scheduler, data order, optimiser structure, config). It is written under a
temporary name and renamed into place, so a crash leaves either the complete folder or none (the temporary
``.tmp_step_*`` folder of a killed write is removed by ``remove_leftovers`` on the next start). No pickles.
``load_latest`` skips a damaged newest checkpoint for the previous intact one and says which it skipped.
"""
import glob
import json
import os
import re
import shutil

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file

from ..safefiles import write_safetensors, write_text

STEP_DIR = re.compile(r"^step_(\d{8})$")


def flatten_tensors(prefix, tree, tensors):
    """Move the tensors of a nested dict/list into ``tensors`` under dotted keys; return the JSON-able rest."""
    if torch.is_tensor(tree):
        if prefix in tensors:
            raise ValueError(f"two checkpoint entries flatten to the same key {prefix!r}")
        tensors[prefix] = tree.detach().cpu().contiguous()
        return {"__tensor__": prefix}
    if isinstance(tree, dict):
        return {"__dict__": [[_key(k), flatten_tensors(f"{prefix}.{k}", v, tensors)] for k, v in tree.items()]}
    if isinstance(tree, (list, tuple)):
        return {"__list__": [flatten_tensors(f"{prefix}.{i}", v, tensors) for i, v in enumerate(tree)],
                "tuple": isinstance(tree, tuple)}
    return tree


def _key(k):
    return {"int": k} if isinstance(k, int) else k


def unflatten_tensors(tree, tensors):
    if isinstance(tree, dict) and "__tensor__" in tree:
        return tensors[tree["__tensor__"]]
    if isinstance(tree, dict) and "__dict__" in tree:
        return {(k["int"] if isinstance(k, dict) else k): unflatten_tensors(v, tensors) for k, v in tree["__dict__"]}
    if isinstance(tree, dict) and "__list__" in tree:
        items = [unflatten_tensors(v, tensors) for v in tree["__list__"]]
        return tuple(items) if tree["tuple"] else items
    return tree


def save_checkpoint(root, step, state, keep_last=3):
    """Write ``state`` (a nested dict of tensors and JSON values) as ``root/step_<step>``; prune old ones.

    Returns the folder. Only one process may call this (rank 0).
    """
    os.makedirs(root, exist_ok=True)
    final = os.path.join(root, f"step_{step:08d}")
    tmp = os.path.join(root, f".tmp_step_{step:08d}_{os.getpid()}")
    shutil.rmtree(tmp, ignore_errors=True)
    os.makedirs(tmp)
    tensors = {}
    structure = flatten_tensors("state", state, tensors)
    write_safetensors(os.path.join(tmp, "tensors.safetensors"), tensors)
    with open(os.path.join(tmp, "state.json"), "w") as f:
        json.dump({"step": step, "structure": structure}, f)
        f.flush()
        os.fsync(f.fileno())
    if os.path.isdir(final):  # a second save of the same step (e.g. interrupted right after a periodic save)
        shutil.rmtree(final)
    os.replace(tmp, final)
    _write_latest(root, os.path.basename(final))
    for old in list_checkpoints(root)[:-keep_last]:
        shutil.rmtree(old, ignore_errors=True)
    return final


def _write_latest(root, name):
    write_text(os.path.join(root, "latest"), name + "\n")


def list_checkpoints(root):
    """Complete checkpoint folders under ``root``, oldest first."""
    if not os.path.isdir(root):
        return []
    names = sorted(n for n in os.listdir(root) if STEP_DIR.match(n)
                   and os.path.isfile(os.path.join(root, n, "state.json")))
    return [os.path.join(root, n) for n in names]


def remove_leftovers(root):
    """Remove what killed writes left under ``root`` (``.tmp_step_*`` folders, ``.latest.*.tmp`` files of
    ``safefiles.atomic_path``); returns their paths. Only the process that writes checkpoints may call this, before
    it writes any."""
    found = sorted(glob.glob(os.path.join(glob.escape(os.fspath(root)), ".tmp_step_*"))
                   + glob.glob(os.path.join(glob.escape(os.fspath(root)), ".latest.*.tmp")))
    for path in found:
        if os.path.isdir(path):
            shutil.rmtree(path, ignore_errors=True)
        else:
            os.remove(path)
    return found


def resolve_resume(root, which):
    """``which`` = ``latest`` (the newest complete checkpoint under ``root``) or a checkpoint folder path."""
    if which == "latest":
        found = list_checkpoints(root)
        if not found:
            raise FileNotFoundError(f"--resume latest: no checkpoint under {root}; start without --resume")
        return found[-1]
    if not os.path.isfile(os.path.join(which, "state.json")):
        raise FileNotFoundError(f"--resume {which}: not a checkpoint folder (no state.json in it)")
    return which


def load_checkpoint(folder):
    """``(step, state)`` of a checkpoint folder; errors name the folder and the problem."""
    try:
        with open(os.path.join(folder, "state.json")) as f:
            meta = json.load(f)
        tensors = load_file(os.path.join(folder, "tensors.safetensors"))
        return meta["step"], unflatten_tensors(meta["structure"], tensors)
    except (OSError, json.JSONDecodeError, SafetensorError) as e:
        raise ValueError(f"checkpoint {folder} is unreadable or incomplete: {e}") from e
    except (KeyError, TypeError, ValueError) as e:  # a structure that names tensors the file lacks, or is mangled
        raise ValueError(f"checkpoint {folder} is unreadable or incomplete: its state.json does not match its "
                         f"tensors ({type(e).__name__}: {e})") from e


def load_latest(root):
    """``(folder, step, state, skipped)``: the newest checkpoint under ``root`` that reads back. ``skipped`` lists
    ``(folder, error)`` of newer ones that did not (a damaged write); the caller warns about them."""
    found = list_checkpoints(root)
    if not found:
        raise FileNotFoundError(f"--resume latest: no checkpoint under {root}; start without --resume")
    skipped = []
    for folder in reversed(found):
        try:
            step, state = load_checkpoint(folder)
        except ValueError as e:
            skipped.append((folder, e))
            continue
        return folder, step, state, skipped
    raise ValueError(f"--resume latest: no intact checkpoint under {root}; every one is damaged: "
                     + "; ".join(str(e) for _, e in skipped))


def require_entries(state, folder, names):
    """Every entry a resume needs; a missing one is an error naming the folder and the entry."""
    for name in names:
        if name not in state:
            raise ValueError(f"checkpoint {folder} lacks the entry {name!r}; it is incomplete or was written by a "
                             "different kind of run")
