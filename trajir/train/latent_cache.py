"""Cached latents of the frozen encoders (``data.cache_latents``): encode an image once, reuse its latent.

Correctness does not depend on the data pipeline: an entry is keyed by a digest of the image's exact pixels
(bytes, shape and dtype), the encoders are frozen and deterministic (posterior mean, no sampling), so a hit
returns what a fresh encode of the same pixels returns (up to the float rounding of encoding it in another
batch). What the rule below decides is only whether a cache can ever hit, since a cache that never hits grows
by one latent per sample:

* ``data.crop = 0`` (whole images) is required: a random crop almost never repeats.
* GT latents are cached then. A horizontal flip is other pixels and so its own entry, so there are at most two
  per image (four with vertical flips): bounded by the data set.
* LQ latents are cached only for paired data (``data.paired_dir``), whose LQ files are fixed. Synthetic
  degradations are redrawn every epoch, so their LQ images never repeat.

Entries live on the CPU (one FLUX latent of a 1024 px image is 1 MiB), so the cache takes no GPU memory.
"""
import hashlib

import torch


def latent_cache_plan(cfg):
    """``(cache_gt, cache_lq)`` for a training config, following the rule of this module's docstring."""
    if not cfg["data.cache_latents"] or cfg["data.crop"] != 0:
        return False, False
    return True, bool(cfg["data.paired_dir"])


def pixel_key(image):
    """Digest of one image's exact pixels, shape and dtype."""
    flat = image.detach().to("cpu").contiguous().reshape(-1)
    digest = hashlib.blake2b(flat.view(torch.uint8).numpy().tobytes(), digest_size=16)
    digest.update(repr((tuple(image.shape), str(image.dtype))).encode())
    return digest.hexdigest()


class LatentCache:
    """Latents of one frozen encoder keyed by :func:`pixel_key`; ``hits`` and ``misses`` count images."""

    def __init__(self):
        self.entries = {}
        self.hits = 0
        self.misses = 0

    def __len__(self):
        return len(self.entries)

    def encode(self, encoder, images, device):
        """``encoder(images)`` on ``device`` for a batch ``[B, 3, H, W]``, encoding only the images not seen yet
        (each distinct image once, even when it appears twice in the batch)."""
        keys = [pixel_key(img) for img in images]
        todo = {}
        for i, k in enumerate(keys):
            if k not in self.entries and k not in todo:
                todo[k] = i
        if todo:
            fresh = encoder(images[list(todo.values())].to(device, torch.float32))
            for k, z in zip(todo, fresh):
                self.entries[k] = z.detach().to("cpu")
        self.misses += len(todo)
        self.hits += len(keys) - len(todo)
        return torch.stack([self.entries[k] for k in keys]).to(device)
