"""Learned metrics through pyiqa (the optional ``iqa`` extra): LPIPS, MUSIQ, CLIPIQA, MANIQA.

Nothing is ever downloaded. Each network is built by pyiqa with its pretrained loading switched off, and the
backbones pyiqa would fetch on its own (torchvision AlexNet for LPIPS, timm ViT-B/8 for MANIQA, OpenAI CLIP for
CLIPIQA) are built empty; every weight then comes from a local file, read with ``torch.load(weights_only=True)``
or safetensors. While a network is built, pyiqa's and torch.hub's download functions are replaced by one that
raises :class:`MissingWeightsError`, so a pyiqa release that tried to fetch something would fail loudly instead.

Weight folder, first match wins: the ``iqa_dir`` argument; else ``$TRAJIR_IQA_DIR`` (one folder, or several
joined with ``os.pathsep``); else the folders registered with :func:`set_default_iqa_dirs` (inside ComfyUI the
node layer registers ``ComfyUI/models/iqa/``).

Files, under the names pyiqa and the upstream releases use. ``HF`` is the Hugging Face repository pyiqa itself
downloads from, https://huggingface.co/chaofengc/IQA-PyTorch-Weights:

============  ==================================  ================================================================
metric        file                                source
============  ==================================  ================================================================
lpips         ``LPIPS_v0.1_alex-df73285e.pth``    HF (LPIPS v0.1 linear layers on AlexNet)
lpips         ``alexnet-owt-7be5be79.pth``        https://download.pytorch.org/models/alexnet-owt-7be5be79.pth
                                                  (torchvision's ImageNet AlexNet; not needed if the LPIPS file
                                                  also holds the ``net.*`` trunk weights)
musiq         ``musiq_koniq_ckpt-e95806b9.pth``   HF (MUSIQ trained on KonIQ-10k, pyiqa's ``musiq``)
clipiqa       ``RN50.pt``                         OpenAI CLIP: ``CLIP_RN50_URL`` below (openaipublic.azureedge.net)
              or ``RN50.safetensors``             the same weights as a state dict (any CLIP ResNet/ViT layout)
maniqa        ``ckpt_koniq10k.pt``                HF (MANIQA trained on KonIQ-10k, pyiqa's ``maniqa``)
============  ==================================  ================================================================

OpenAI ships ``RN50.pt`` as a TorchScript archive, which cannot be read weights-only; it is opened with
``torch.jit.load`` only when its SHA-256 equals the digest OpenAI publishes in the file's URL (the check the clip
package itself makes), otherwise it is refused.
"""
import contextlib
import hashlib
import importlib
import importlib.util
import os
import pathlib
import pickle
import threading
import types
import zipfile

import torch
from safetensors import SafetensorError
from safetensors.torch import load_file as load_safetensors

from .common import check_images, check_reference

HF_SOURCE = "https://huggingface.co/chaofengc/IQA-PyTorch-Weights"
ALEXNET_URL = "https://download.pytorch.org/models/alexnet-owt-7be5be79.pth"
CLIP_RN50_SHA256 = "afeb0e10f9e5a86da6080e35cf09123aca3b358a0c3e3b6c78a7b63bc04b6762"
CLIP_RN50_URL = f"https://openaipublic.azureedge.net/clip/models/{CLIP_RN50_SHA256}/RN50.pt"

# metric -> groups of files; one file of each group must be present (the first found is used)
WEIGHT_FILES = {
    "lpips": (("LPIPS_v0.1_alex-df73285e.pth",), ("alexnet-owt-7be5be79.pth",)),
    "musiq": (("musiq_koniq_ckpt-e95806b9.pth",),),
    "clipiqa": (("RN50.pt", "RN50.safetensors"),),
    "maniqa": (("ckpt_koniq10k.pt",),),
}
SOURCES = {
    "alexnet-owt-7be5be79.pth": ALEXNET_URL,
    "RN50.pt": CLIP_RN50_URL,
    "RN50.safetensors": f"a state-dict conversion of {CLIP_RN50_URL}",
}
# AlexNet ``features`` indices -> the LPIPS trunk slice that holds them (pyiqa splits after each ReLU)
_ALEX_SLICES = {0: 1, 3: 2, 6: 3, 8: 4, 10: 5}
# AlexNet (LPIPS) and CLIP's ResNet (CLIPIQA) pool smaller images down to nothing; one floor for all four
MIN_SIZE = 32
_READ_ERRORS = (OSError, RuntimeError, EOFError, ValueError, pickle.UnpicklingError, zipfile.BadZipFile,
                SafetensorError)

_registered_dirs = []
_build_lock = threading.RLock()
_models = {}


class MissingWeightsError(FileNotFoundError):
    """A learned metric's weight file is not in any IQA weight folder."""


class CorruptWeightsError(ValueError):
    """A weight file exists but cannot be read, or does not fit the network."""


_ARCH_MODULES = {"lpips": "pyiqa.archs.lpips_arch", "musiq": "pyiqa.archs.musiq_arch",
                  "clipiqa": "pyiqa.archs.clipiqa_arch", "maniqa": "pyiqa.archs.maniqa_arch"}


def pyiqa_installed():
    return importlib.util.find_spec("pyiqa") is not None


def arch_module(metric):
    """pyiqa's module of ``metric``'s network, or an ImportError that says what is missing."""
    if not pyiqa_installed():
        raise ImportError(f"{metric} needs pyiqa, the optional 'iqa' extra: pip install 'pyiqa>=0.1.13'")
    try:
        return importlib.import_module(_ARCH_MODULES[metric])
    except ImportError as err:
        hint = " (openai-clip imports pkg_resources, gone from setuptools >= 81: pip install 'setuptools<81')" \
            if "pkg_resources" in str(err) else ""
        raise ImportError(f"{metric} needs {_ARCH_MODULES[metric]}, which failed to import: {err}{hint}") from err


def importable(metric):
    """Whether pyiqa's network module for ``metric`` imports (pyiqa and its dependencies present)."""
    try:
        arch_module(metric)
    except ImportError:
        return False
    return True


def set_default_iqa_dirs(paths):
    """Register the folders searched when neither ``iqa_dir`` nor ``$TRAJIR_IQA_DIR`` is given.

    The ComfyUI node layer calls this with ``folder_paths.get_folder_paths("iqa")``.
    """
    if isinstance(paths, (str, os.PathLike)):
        paths = [paths]
    paths = [pathlib.Path(p) for p in paths]
    _registered_dirs[:] = paths
    return list(paths)


def iqa_dirs(iqa_dir=None):
    """The folders searched for weight files, in order (see the module docstring)."""
    if iqa_dir is not None:
        return [pathlib.Path(iqa_dir)]
    env = os.environ.get("TRAJIR_IQA_DIR")
    if env:
        return [pathlib.Path(p) for p in env.split(os.pathsep) if p]
    return list(_registered_dirs)


def _describe(dirs):
    if not dirs:
        return ("no IQA weight folder is set (pass iqa_dir, set $TRAJIR_IQA_DIR, or in ComfyUI use "
                "ComfyUI/models/iqa/)")
    return "not found in " + ", ".join(str(d) for d in dirs)


def find_weight(metric, names, iqa_dir=None):
    """The path of the first of ``names`` found in the weight folders, or :class:`MissingWeightsError`."""
    dirs = iqa_dirs(iqa_dir)
    for name in names:
        for folder in dirs:
            if (folder / name).is_file():
                return folder / name
    wanted = " or ".join(repr(n) for n in names)
    source = SOURCES.get(names[0], HF_SOURCE)
    raise MissingWeightsError(f"{metric} needs the weight file {wanted}, {_describe(dirs)}; download it from "
                              f"{source} and put it in that folder (TrajIR never downloads)")


def _present(metric, names, iqa_dir):
    try:
        return find_weight(metric, names, iqa_dir)
    except MissingWeightsError:
        return None


def has_weights(metric, iqa_dir=None):
    """Whether the weight files ``metric`` needs are present (LPIPS needs the AlexNet file only when its own
    file lacks the ``net.*`` trunk, so that file is read to decide)."""
    groups = WEIGHT_FILES[metric]
    first = _present(metric, groups[0], iqa_dir)
    if first is None:
        return False
    if all(_present(metric, names, iqa_dir) for names in groups[1:]):
        return True
    if metric == "lpips":
        try:
            return any(k.startswith("net.") for k in read_state_dict(first))
        except CorruptWeightsError:
            return False
    return False


def read_state_dict(path):
    """A flat ``{name: tensor}`` from a safetensors or weights-only torch file (``params``/``state_dict``
    wrappers and ``module.`` prefixes removed). Unreadable files raise :class:`CorruptWeightsError` naming them."""
    path = pathlib.Path(path)
    try:
        if path.suffix == ".safetensors":
            state = load_safetensors(str(path), device="cpu")
        else:
            state = torch.load(path, map_location="cpu", weights_only=True)
    except _READ_ERRORS as err:
        raise CorruptWeightsError(f"weight file {path} is corrupt or not a weights-only checkpoint "
                                  f"({type(err).__name__}: {str(err).splitlines()[0] if str(err) else ''})") from err
    for key in ("params", "state_dict"):
        if isinstance(state, dict) and isinstance(state.get(key), dict):
            state = state[key]
    if not isinstance(state, dict) or not all(torch.is_tensor(v) for v in state.values()):
        raise CorruptWeightsError(f"weight file {path} does not hold a state dict of tensors")
    return {k.removeprefix("module."): v for k, v in state.items()}


def _clip_state_dict(path):
    """CLIP weights from a state-dict file, or from OpenAI's TorchScript ``RN50.pt`` after its digest matches."""
    if path.suffix != ".pt":
        return read_state_dict(path)
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 22), b""):
            digest.update(chunk)
    if digest.hexdigest() != CLIP_RN50_SHA256:
        raise CorruptWeightsError(f"weight file {path} is not OpenAI's RN50.pt (SHA-256 {digest.hexdigest()[:16]}... "
                                  f"differs from {CLIP_RN50_SHA256[:16]}...); TorchScript archives are opened only "
                                  "when they match. Put the weights as RN50.safetensors instead")
    return {k: v.float() for k, v in torch.jit.load(str(path), map_location="cpu").state_dict().items()}


def _refuse_download(url, *args, **kwargs):
    name = str(url).rsplit("/", 1)[-1].split("?")[0]
    raise MissingWeightsError(f"a download of {url} was attempted; TrajIR never downloads: put {name} in an IQA "
                              "weight folder instead")


@contextlib.contextmanager
def _substituted(pairs):
    """Temporarily set ``(module, attribute, value)`` triples, restoring them afterwards (one build at a time)."""
    with _build_lock:
        saved = [(module, attr, getattr(module, attr)) for module, attr, _ in pairs]
        try:
            for module, attr, value in pairs:
                setattr(module, attr, value)
            yield
        finally:
            for module, attr, value in reversed(saved):
                setattr(module, attr, value)


def _download_functions():
    """``(module, name)`` of the functions torch.hub (torchvision's loader) and pyiqa download through."""
    pairs = [(importlib.import_module("torch.hub"), "download_url_to_file")]
    if pyiqa_installed():
        pairs.append((importlib.import_module("pyiqa.utils.download_util"), "download_url_to_file"))
    return pairs


def no_downloads(extra=()):
    """A context in which downloads through torch.hub or pyiqa raise :class:`MissingWeightsError`, plus the
    ``(module, attribute, value)`` substitutions ``extra``; everything is restored on exit."""
    return _substituted([(m, name, _refuse_download) for m, name in _download_functions()] + list(extra))


def _empty_backbones(metric, clip_model=None):
    """Replacements for the backbone factories pyiqa calls with hard-coded pretrained weights."""
    module = arch_module(metric)
    if metric == "lpips":
        import torchvision

        return [(module, "models", types.SimpleNamespace(alexnet=lambda **_: torchvision.models.alexnet(weights=None)))]
    if metric == "maniqa":
        import timm

        def create_model(name, **kwargs):
            return timm.create_model(name, **{**kwargs, "pretrained": False})

        return [(module, "timm", types.SimpleNamespace(create_model=create_model))]
    if metric == "clipiqa":
        return [(module, "load", lambda *_, **__: clip_model)]
    return []


def build_empty(metric, clip_model=None, **opts):
    """pyiqa's inference model for ``metric`` with no weights loaded and no download attempted."""
    backbones = _empty_backbones(metric, clip_model)
    import pyiqa

    with no_downloads(backbones):
        return pyiqa.create_metric(metric, device=torch.device("cpu"), pretrained=False, **opts)


def _load_into(net, state, path, optional=()):
    """Load ``state`` into ``net``; every key must match except ``optional`` prefixes (constants, aliases)."""
    expected = net.state_dict()
    missing = [k for k in expected if k not in state and not k.startswith(tuple(optional))]
    unexpected = [k for k in state if k not in expected]
    wrong = [k for k in state if k in expected and tuple(state[k].shape) != tuple(expected[k].shape)]
    if missing or unexpected or wrong:
        raise CorruptWeightsError(f"weight file {path} does not fit {type(net).__name__}: {len(missing)} missing "
                                  f"(e.g. {missing[:3]}), {len(unexpected)} unexpected (e.g. {unexpected[:3]}), "
                                  f"{len(wrong)} of another shape (e.g. {wrong[:3]})")
    net.load_state_dict(state, strict=False)


def _lpips(iqa_dir):
    lin_path = find_weight("lpips", WEIGHT_FILES["lpips"][0], iqa_dir)
    state = read_state_dict(lin_path)
    if not any(k.startswith("net.") for k in state):
        alex_path = find_weight("lpips", WEIGHT_FILES["lpips"][1], iqa_dir)
        for key, value in read_state_dict(alex_path).items():
            index = int(key.split(".")[1]) if key.startswith("features.") else None
            if index in _ALEX_SLICES:
                state[f"net.slice{_ALEX_SLICES[index]}.{index}.{key.rsplit('.', 1)[1]}"] = value
    model = build_empty("lpips")
    # lins.N are the same modules as linN; the input scaling layer holds constants
    _load_into(model.net, state, lin_path, optional=("lins.", "scaling_layer."))
    return model


def _clipiqa(iqa_dir):
    arch_module("clipiqa")
    from pyiqa.archs.clip_model import build_model

    path = find_weight("clipiqa", WEIGHT_FILES["clipiqa"][0], iqa_dir)
    state = _clip_state_dict(path)
    try:
        clip_model = build_model(dict(state)).float()
    except (KeyError, RuntimeError, AssertionError) as err:
        detail = str(err).splitlines()[0][:200] if str(err) else type(err).__name__
        raise CorruptWeightsError(f"weight file {path} is not a CLIP state dict: {detail}") from err
    return build_empty("clipiqa", clip_model=clip_model)


def _single_file(metric, **opts):
    def load(iqa_dir):
        path = find_weight(metric, WEIGHT_FILES[metric][0], iqa_dir)
        state = read_state_dict(path)
        model = build_empty(metric, **opts)
        _load_into(model.net, state, path)
        return model

    return load


def load_model(metric, iqa_dir=None, crops=None):
    """pyiqa's inference model of ``metric`` with its weights from the local folder, on the CPU unless moved.

    Cached per metric, weight files (and their modification times) and options (``crops``: MANIQA only).
    """
    files = []
    for names in WEIGHT_FILES[metric]:
        path = _present(metric, names, iqa_dir)
        if path is not None:
            files.append((str(path), path.stat().st_mtime_ns))
    key = (metric, tuple(files), crops)
    if key not in _models:
        loaders = {"lpips": _lpips, "clipiqa": _clipiqa, "musiq": _single_file("musiq"),
                   "maniqa": _single_file("maniqa", test_sample=crops)}
        _models[key] = loaders[metric](iqa_dir).eval()
    return _models[key]


def clear_cache():
    """Drop the loaded networks (they are kept for reuse, keyed by file and options)."""
    _models.clear()


def _score(metric, images, reference=None, iqa_dir=None, crops=None):
    check_images("images", images, MIN_SIZE, metric.upper())
    if metric == "lpips":
        check_reference(images, reference, MIN_SIZE, "LPIPS")
    model = load_model(metric, iqa_dir, crops).to(images.device)
    with torch.no_grad():
        x = images.float()
        out = model(x, reference.float()) if metric == "lpips" else model(x)
    return out.reshape(images.shape[0]).float()


def lpips(images, reference, iqa_dir=None):
    """LPIPS v0.1 (AlexNet) distance to ``reference`` -> ``[B]``, lower is better (0 for identical images)."""
    return _score("lpips", images, reference, iqa_dir)


def musiq(images, iqa_dir=None):
    """MUSIQ (KonIQ-10k) quality, about 0..100, higher is better -> ``[B]``."""
    return _score("musiq", images, None, iqa_dir)


def clipiqa(images, iqa_dir=None):
    """CLIP-IQA (RN50, pyiqa's prompt ensemble) quality in 0..1, higher is better -> ``[B]``."""
    return _score("clipiqa", images, None, iqa_dir)


def maniqa(images, iqa_dir=None, crops=20):
    """MANIQA (KonIQ-10k) quality, about 0..1, higher is better -> ``[B]``.

    ``crops``: the number of uniformly placed 224-px test crops averaged (pyiqa's default 20).
    """
    if isinstance(crops, bool) or not isinstance(crops, int) or crops < 1:
        raise ValueError(f"crops is {crops!r}; expected a positive integer number of MANIQA test crops")
    return _score("maniqa", images, None, iqa_dir, crops)
