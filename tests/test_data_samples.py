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
