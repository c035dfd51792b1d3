"""Shipped sample photos: sizes, licences documented, fixed split, and provenance from scikit-image."""
import pathlib

import numpy as np
import pytest
from PIL import Image

from trajir.data import image_size, read_image, sample_images, sample_split

# file -> scikit-image source file (the licences are in trajir/data/samples/README.md)
SOURCES = {"astronaut.png": "astronaut.png", "chelsea.png": "chelsea.png", "coffee.png": "coffee.png",
           "hubble_deep_field.png": "hubble_deep_field.jpg", "retina.png": "retina.jpg", "rocket.png": "rocket.jpg"}


def test_samples_are_small_documented_photos():
    files = sample_images()
    assert [f.name for f in files] == sorted(SOURCES)
    assert sum(f.stat().st_size for f in files) < 1.5 * 2 ** 20
    readme = (files[0].parent / "README.md").read_text()
    for f in files:
        assert max(image_size(f)) == 384 and f"`{f.name}`" in readme
        img = read_image(f)
        assert img.shape[0] == 3 and float(img.std()) > 0.05


def test_split_is_fixed():
    train, held = sample_split()
    assert [f.name for f in held] == ["chelsea.png", "coffee.png"]
    assert [f.name for f in train] == ["astronaut.png", "hubble_deep_field.png", "retina.png", "rocket.png"]


@pytest.mark.parametrize("name", sorted(SOURCES))
def test_sample_is_the_downscaled_scikit_image_photo(name):
    data = pytest.importorskip("skimage.data", reason="scikit-image holds the source photos")
    src = Image.open(pathlib.Path(data.__file__).parent / SOURCES[name]).convert("RGB")
    scale = 384 / max(src.size)
    ref = np.asarray(src.resize((round(src.size[0] * scale), round(src.size[1] * scale)), Image.LANCZOS))
    ours = np.asarray(Image.open(pathlib.Path(sample_images()[0].parent / name)).convert("RGB"))
    assert ours.shape == ref.shape
    assert np.abs(ours.astype(np.float32) - ref).mean() < 1.0  # 8-bit levels; Pillow versions may round apart


def test_sample_pair_crops_degrades_and_shrinks():
    import torch

    from trajir.data import degrade_at_strength
    from trajir.data.samples import load_sample, sample_names, sample_pair

    assert sample_names() == sorted(p.removesuffix(".png") for p in SOURCES)
    chelsea = load_sample("chelsea")
    assert chelsea.shape == (1, 3, 255, 384)
    lq, gt = sample_pair(chelsea, "lowlight", 0.5, 3)
    assert gt.shape == lq.shape == (1, 3, 240, 384)  # centre crop to multiples of 16
    assert torch.equal(gt, chelsea[..., 7:247, :])
    assert torch.equal(lq, degrade_at_strength("lowlight", gt, 3, 0.5))
    same, clean = sample_pair(chelsea, "none")
    assert torch.equal(same, clean) and torch.equal(clean, gt)
    small, full = sample_pair(load_sample("astronaut"), "sr", 0.5, 0, size=128, downscale=4)
    assert full.shape == (1, 3, 128, 128) and small.shape == (1, 3, 32, 32)
    assert float((small.mean(dim=(2, 3)) - full.mean(dim=(2, 3))).abs().max()) < 0.03  # the same picture, smaller


def test_sample_pair_errors_name_the_input():
    import torch

    from trajir.data.samples import load_sample, sample_pair

    with pytest.raises(ValueError, match=r"unknown sample photo 'lena'; the bundled photos are \['astronaut'"):
        load_sample("lena")
    with pytest.raises(ValueError, match=r"task must be 'none' or one of \['deblur'"):
        sample_pair(torch.rand(1, 3, 32, 32), "blurry")
    with pytest.raises(ValueError, match=r"downscale must be an integer in 1..8, got 9"):
        sample_pair(torch.rand(1, 3, 32, 32), "none", downscale=9)
    with pytest.raises(ValueError, match=r"downscale 4 needs an image of at least 64 pixels per side, got 48x48"):
        sample_pair(torch.rand(1, 3, 48, 48), "sr", downscale=4)
    with pytest.raises(ValueError, match=r"the image is 8x40 pixels; at least 16x16 is needed"):
        sample_pair(torch.rand(1, 3, 8, 40))
    with pytest.raises(ValueError, match=r"clean must have 4 dimensions \[B, C, H, W\]"):
        sample_pair(torch.rand(3, 32, 32))
    with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\^64 - 1\], got -1"):
        sample_pair(torch.rand(1, 3, 32, 32), "denoise", seed=-1)
