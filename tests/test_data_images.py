"""Image files: round trips, mode conversions, EXIF rotation, atomic writes, errors that name the file."""
import numpy as np
import pytest
import torch
from PIL import Image

from trajir.data import image_size, list_images, read_image, write_png


def test_png_round_trip_is_exact(tmp_path):
    img = torch.randint(0, 256, (3, 20, 30)).float() / 255
    path = write_png(tmp_path / "sub" / "a.png", img)
    back = read_image(path)
    assert back.shape == (3, 20, 30) and back.dtype == torch.float32
    torch.testing.assert_close(back, img, atol=1e-7, rtol=0)
    assert image_size(path) == (20, 30)


def test_write_png_is_atomic_and_overwrites(tmp_path):
    path = tmp_path / "a.png"
    write_png(path, torch.zeros(1, 3, 8, 8))
    write_png(path, torch.ones(1, 8, 8))
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]  # no temporary file left
    torch.testing.assert_close(read_image(path), torch.ones(3, 8, 8))
    with pytest.raises(ValueError,
                       match=r"image must have shape \[3, H, W\], \[1, H, W\] or \[1, 3, H, W\], got \(2, 3, 8, 8\)"):
        write_png(path, torch.zeros(2, 3, 8, 8))


def test_modes_become_rgb(tmp_path):
    grey = np.arange(12, dtype=np.uint8).reshape(3, 4) * 20
    Image.fromarray(grey, "L").save(tmp_path / "grey.png")
    rgba = np.zeros((3, 4, 4), dtype=np.uint8)
    rgba[..., 0], rgba[..., 3] = 200, 0  # fully transparent red: the RGB values are kept
    Image.fromarray(rgba, "RGBA").save(tmp_path / "rgba.png")
    Image.fromarray(grey, "L").convert("P").save(tmp_path / "palette.png")
    deep = (np.arange(12, dtype=np.uint16).reshape(3, 4) * 5000)
    Image.fromarray(deep).save(tmp_path / "deep.png")

    expect_grey = torch.from_numpy(grey).float().div(255).expand(3, -1, -1)
    torch.testing.assert_close(read_image(tmp_path / "grey.png"), expect_grey)
    torch.testing.assert_close(read_image(tmp_path / "palette.png"), expect_grey)
    torch.testing.assert_close(read_image(tmp_path / "rgba.png")[:, 0, 0], torch.tensor([200 / 255, 0.0, 0.0]))
    torch.testing.assert_close(read_image(tmp_path / "deep.png"),
                               torch.from_numpy(deep.astype(np.float32) / 65535).expand(3, -1, -1))


def test_exif_orientation_is_applied(tmp_path):
    img = Image.fromarray(np.zeros((10, 30, 3), dtype=np.uint8))
    exif = Image.Exif()
    exif[0x0112] = 6  # rotate 90 degrees clockwise for display
    img.save(tmp_path / "rotated.jpg", exif=exif.tobytes())
    assert image_size(tmp_path / "rotated.jpg") == (30, 10)
    assert read_image(tmp_path / "rotated.jpg").shape == (3, 30, 10)


def test_unreadable_files_are_named(tmp_path):
    (tmp_path / "junk.png").write_bytes(b"this is not an image")
    with pytest.raises(ValueError, match=r"cannot read image '.*junk\.png'"):
        read_image(tmp_path / "junk.png")
    with pytest.raises(ValueError, match=r"cannot read image '.*junk\.png'"):
        image_size(tmp_path / "junk.png")
    write_png(tmp_path / "whole.png", torch.rand(3, 64, 64))
    data = (tmp_path / "whole.png").read_bytes()
    (tmp_path / "cut.png").write_bytes(data[: len(data) // 2])  # header intact, pixel data truncated
    assert image_size(tmp_path / "cut.png") == (64, 64)
    with pytest.raises(ValueError, match=r"cannot read image '.*cut\.png'"):
        read_image(tmp_path / "cut.png")
    with pytest.raises(ValueError, match=r"image file '.*missing\.png' does not exist"):
        read_image(tmp_path / "missing.png")


def test_list_images_filters_and_sorts(tmp_path):
    for name in ["b.PNG", "a.jpg", ".hidden.png", "notes.txt", "c.webp"]:
        (tmp_path / name).write_bytes(b"")
    (tmp_path / "d.png").mkdir()
    assert [p.name for p in list_images(tmp_path)] == ["a.jpg", "b.PNG", "c.webp"]
    with pytest.raises(ValueError, match=r"gt_dir '.*nowhere' does not exist; expected a folder of images"):
        list_images(tmp_path / "nowhere", "gt_dir")
    (tmp_path / "empty").mkdir()
    with pytest.raises(ValueError, match=r"lq_dir '.*empty' holds no image files"):
        list_images(tmp_path / "empty", "lq_dir")
