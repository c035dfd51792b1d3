"""Training pairs: paired folders, clean folders with a synthetic degradation, and a weighted mix of tasks.

Every dataset answers ``sample(index, draw)`` with ``{"lq": [3,h,w], "gt": [3,h,w], "task": str, "name": str}``.
All randomness of a sample (its crop, its flips, its degradation) is seeded by ``(seed, index, draw)``, where
``draw`` is the epoch or any integer the caller derives, so a sample is a pure function of its key: runs repeat
exactly, resumed runs need only the sampler's position, and every rank of a distributed run makes the same
sample for the same key. All files are checked when a dataset is built (names, readability of headers, sizes
against the crop), so bad data fails before training starts.
"""
import hashlib
import pathlib

import torch
import torch.nn.functional as F

from .degrade import TASKS, degrade
from .images import IMAGE_EXTENSIONS, list_images, read_image
from .rng import derive_seed
from .transforms import check_sizes, parse_crop, random_crop_flip

_SHOWN = 10  # names listed in an error before "... and N more"


def _listing(names):
    shown = ", ".join(map(str, names[:_SHOWN]))
    return shown + (f", ... and {len(names) - _SHOWN} more" if len(names) > _SHOWN else "")


def _by_stem(files, name):
    """``{stem: path}``; two files with one stem (``a.png``, ``a.jpg``) are ambiguous."""
    out = {}
    for f in files:
        if f.stem in out:
            raise ValueError(f"{name} holds two images named {f.stem!r}: {out[f.stem].name} and {f.name}; "
                             "keep one")
        out[f.stem] = f
    return out


def _select(stems, names, what):
    """The stems to keep: all, or those in ``names`` (each must exist)."""
    if names is None:
        return sorted(stems)
    missing = sorted(set(names) - set(stems))
    if missing:
        raise ValueError(f"names not found in {what}: {_listing(missing)}")
    return sorted(set(names))


def split_holdout(items, holdout):
    """Split files or names into ``(train, held_out)`` by file name, deterministically.

    Items are ranked by the SHA-256 of their stem (``gt/a.png`` and ``lq/a.jpg`` rank alike) and the first
    ``holdout`` of them (an int count, or a fraction in 0..1 of the total, at least one) are held out. The choice
    depends on names only, so it is the same on every machine and for any input order; with a fixed count, adding
    a file moves at most one old file, from held-out to training. Both lists keep the input order.
    """
    items = list(items)
    n = len(items)
    if isinstance(holdout, float) and 0.0 < holdout < 1.0:
        count = max(1, round(holdout * n))
    elif isinstance(holdout, int) and not isinstance(holdout, bool) and 0 <= holdout < n:
        count = holdout
    else:
        raise ValueError(f"holdout must be an integer count in 0..{n - 1} or a fraction in (0, 1) of the {n} "
                         f"items, got {holdout!r}")
    if count >= n:
        raise ValueError(f"holdout {holdout!r} leaves no training items out of {n}")
    ranked = sorted(range(n), key=lambda i: hashlib.sha256(_stem(items[i]).encode("utf-8")).hexdigest())
    held = set(ranked[:count])
    return [x for i, x in enumerate(items) if i not in held], [x for i, x in enumerate(items) if i in held]


def _stem(item):
    path = pathlib.Path(str(item))
    return path.stem if path.suffix.lower() in IMAGE_EXTENSIONS else path.name


def _check_index(index, length):
    if isinstance(index, bool) or not isinstance(index, int) or not 0 <= index < length:
        raise ValueError(f"index must be an integer in 0..{length - 1}, got {index!r}")


class PairedFolders:
    """Pairs of equally named images in ``lq_dir`` and ``gt_dir`` (or ``root/lq`` and ``root/gt``).

    Names match by file stem, so ``lq/a.jpg`` pairs with ``gt/a.png``. An LQ image smaller than its GT by one
    integer factor on both sides (an SR pair such as DIV2K x4) is upscaled bicubically to the GT size, because the
    restorer maps LQ to HQ at equal size. ``names`` keeps only those stems (a held-out split, see
    :func:`split_holdout`).

    Construction reads every header (names, sizes, crop); with ``cache`` it also decodes every image and keeps it
    in memory, so corrupt pixel data fails up front too; without, it fails when the image is first loaded.
    """

    def __init__(self, root=None, *, lq_dir=None, gt_dir=None, crop=None, hflip=True, vflip=False, task="paired",
                 seed=0, names=None, cache=False, shuffle_channels=False):
        if root is not None:
            if lq_dir is not None or gt_dir is not None:
                raise ValueError("give either root (a folder holding lq/ and gt/) or lq_dir and gt_dir, not both")
            lq_dir, gt_dir = pathlib.Path(root) / "lq", pathlib.Path(root) / "gt"
        elif lq_dir is None or gt_dir is None:
            raise ValueError("give root (a folder holding lq/ and gt/) or both lq_dir and gt_dir")
        self.crop = parse_crop(crop)
        self.hflip, self.vflip, self.task, self.seed = bool(hflip), bool(vflip), str(task), int(seed)
        self.shuffle_channels = bool(shuffle_channels)
        lq = _by_stem(list_images(lq_dir, "lq_dir"), "lq_dir")
        gt = _by_stem(list_images(gt_dir, "gt_dir"), "gt_dir")
        only_lq, only_gt = sorted(set(lq) - set(gt)), sorted(set(gt) - set(lq))
        if only_lq or only_gt:
            parts = []
            if only_lq:
                parts.append(f"{len(only_lq)} in lq_dir {str(lq_dir)!r} have no GT: {_listing(only_lq)}")
            if only_gt:
                parts.append(f"{len(only_gt)} in gt_dir {str(gt_dir)!r} have no LQ: {_listing(only_gt)}")
            raise ValueError("lq_dir and gt_dir must hold the same image names; " + "; ".join(parts))
        self.names = _select(lq, names, f"lq_dir {str(lq_dir)!r}")
        self.files = [(lq[n], gt[n]) for n in self.names]
        gt_sizes = check_sizes([g for _, g in self.files], self.crop)
        lq_sizes = check_sizes([q for q, _ in self.files], None)
        self.factors = [_upscale_factor(q, qs, g, gs) for (q, g), qs, gs in zip(self.files, lq_sizes, gt_sizes)]
        self._cache = {i: self._decode(i) for i in range(len(self.names))} if cache else None

    def __len__(self):
        return len(self.names)

    def _decode(self, index):
        lq_path, gt_path = self.files[index]
        lq, gt = read_image(lq_path), read_image(gt_path)
        if self.factors[index] > 1:
            lq = F.interpolate(lq[None], size=gt.shape[-2:], mode="bicubic", align_corners=False)[0].clamp(0, 1)
        return lq, gt

    def sample(self, index, draw=0):
        _check_index(index, len(self))
        lq, gt = self._cache[index] if self._cache is not None else self._decode(index)
        g = torch.Generator().manual_seed(derive_seed(self.seed, index, draw))
        lq, gt = random_crop_flip([lq, gt], self.crop, g, hflip=self.hflip, vflip=self.vflip,
                                  shuffle_channels=self.shuffle_channels)
        return {"lq": lq, "gt": gt, "task": self.task, "name": self.names[index]}


def _upscale_factor(lq_path, lq_size, gt_path, gt_size):
    """1 for equal sizes, ``k`` when the GT is exactly ``k`` times the LQ on both sides, else an error."""
    (lh, lw), (gh, gw) = lq_size, gt_size
    if (lh, lw) == (gh, gw):
        return 1
    if gh % lh == 0 and gw % lw == 0 and gh // lh == gw // lw:
        return gh // lh
    raise ValueError(f"LQ image {str(lq_path)!r} is {lh}x{lw} but its GT {str(gt_path)!r} is {gh}x{gw}; expected "
                     "equal sizes or a GT exactly k times larger on both sides")


class SyntheticPairs:
    """Clean images degraded on the fly for ``task`` (see ``trajir.data.degrade.TASKS``).

    ``clean`` is a folder, a list of image files, or a list of ``[3,H,W]`` tensors in 0..1 (named ``image_0000``
    and so on). The crop is taken first and then degraded, with ``options`` overriding the task's ranges. The
    task and options are checked at construction by degrading one grey image of the smallest size a sample
    can have; files are checked as in :class:`PairedFolders` (``cache`` decodes and keeps them all up front).
    """

    def __init__(self, clean, task, *, seed=0, crop=None, hflip=True, vflip=False, options=None, names=None,
                 cache=False, shuffle_channels=False):
        if task not in TASKS:
            raise ValueError(f"task must be one of {sorted(TASKS)}, got {task!r}")
        self.task, self.seed, self.options = task, int(seed), dict(options or {})
        self.crop = parse_crop(crop)
        self.hflip, self.vflip, self.shuffle_channels = bool(hflip), bool(vflip), bool(shuffle_channels)
        if isinstance(clean, (str, pathlib.Path)):
            clean = list_images(clean, "clean")
        if not isinstance(clean, (list, tuple)) or not clean:
            raise ValueError("clean must be a folder, a non-empty list of image files or a non-empty list of "
                             f"[3, H, W] tensors, got {type(clean).__name__}")
        tensors = [torch.is_tensor(c) for c in clean]
        if any(tensors) and not all(tensors):
            raise ValueError("clean must hold either image files or tensors, not both")
        if all(tensors):
            items = {f"image_{i:04d}": _check_tensor(i, c) for i, c in enumerate(clean)}
        else:
            files = [pathlib.Path(c) for c in clean]
            for f in files:
                if not f.is_file():
                    raise ValueError(f"clean image file {str(f)!r} does not exist")
            items = _by_stem(files, "clean")
        self.names = _select(items, names, "clean")
        self._items = [items[n] for n in self.names]
        sizes = check_sizes(self._items, self.crop, names=self.names)
        smallest = self.crop or min(sizes, key=lambda s: s[0] * s[1])
        degrade(task, torch.full((1, 3, *smallest), 0.5), 0, **self.options)
        self._cache = {i: self._decode(i) for i in range(len(self.names))} if cache else None

    def __len__(self):
        return len(self.names)

    def _decode(self, index):
        item = self._items[index]
        return item if torch.is_tensor(item) else read_image(item)

    def sample(self, index, draw=0):
        _check_index(index, len(self))
        clean = self._cache[index] if self._cache is not None else self._decode(index)
        g = torch.Generator().manual_seed(derive_seed(self.seed, index, draw, 0))
        (gt,) = random_crop_flip([clean], self.crop, g, hflip=self.hflip, vflip=self.vflip,
                                 shuffle_channels=self.shuffle_channels)
        lq = degrade(self.task, gt[None], derive_seed(self.seed, index, draw, 1), **self.options)[0]
        return {"lq": lq, "gt": gt, "task": self.task, "name": self.names[index]}


def _check_tensor(i, image):
    if image.ndim == 4 and image.shape[0] == 1:
        image = image[0]
    if image.ndim != 3 or image.shape[0] != 3 or not image.is_floating_point():
        raise ValueError(f"clean[{i}] must be a float tensor [3, H, W] in 0..1, got {image.dtype} "
                         f"{tuple(image.shape)}")
    return image.float().clamp(0, 1)


class TaskMix:
    """A weighted mix of datasets: ``TaskMix([(sr_pairs, 4), (denoise_pairs, 1)])`` draws SR four times as often.

    Sample ``index`` of draw ``d`` picks part ``k`` with probability ``frequency_k / sum(frequencies)`` and an item
    of it uniformly, both from a generator seeded by ``(seed, d, index)``, then asks that part for the item under a
    key derived from the same triple, so repeated picks of one item get fresh crops and degradations. ``length``
    (the epoch size) defaults to the parts' total size. All parts must share one crop so batches stack.
    """

    def __init__(self, parts, *, seed=0, length=None):
        if not isinstance(parts, (list, tuple)) or not parts:
            raise ValueError("parts must be a non-empty list of (dataset, frequency) pairs")
        for i, part in enumerate(parts):
            if not isinstance(part, (list, tuple)) or len(part) != 2 or not hasattr(part[0], "sample"):
                raise ValueError(f"parts[{i}] must be a (dataset, frequency) pair, got {part!r}")
            freq = part[1]
            if isinstance(freq, bool) or not isinstance(freq, (int, float)) or not 0 < freq < float("inf"):
                raise ValueError(f"parts[{i}] frequency must be a finite number > 0, got {freq!r}")
            if len(part[0]) == 0:
                raise ValueError(f"parts[{i}] dataset is empty")
        crops = {getattr(d, "crop", None) for d, _ in parts}
        if len(crops) > 1:
            raise ValueError(f"all parts must use the same crop so batches stack, got {sorted(map(str, crops))}")
        self.crop = crops.pop()
        self.datasets = [d for d, _ in parts]
        total = float(sum(f for _, f in parts))
        self.frequencies = torch.tensor([f / total for _, f in parts], dtype=torch.float64)
        self.seed = int(seed)
        self.length = sum(len(d) for d in self.datasets) if length is None else length
        if isinstance(self.length, bool) or not isinstance(self.length, int) or self.length < 1:
            raise ValueError(f"length must be a positive integer, got {length!r}")

    def __len__(self):
        return self.length

    def choose(self, index, draw=0):
        """``(part, item, key)``: which dataset, which of its items, and the draw key it is sampled with."""
        _check_index(index, len(self))
        g = torch.Generator().manual_seed(derive_seed(self.seed, draw, index))
        part = int(torch.multinomial(self.frequencies, 1, generator=g))
        item = int(torch.randint(len(self.datasets[part]), (1,), generator=g))
        return part, item, derive_seed(self.seed, draw, index, 1)

    def sample(self, index, draw=0):
        part, item, key = self.choose(index, draw)
        return self.datasets[part].sample(item, key)
