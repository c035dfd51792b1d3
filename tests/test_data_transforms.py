"""``capped_size``: the output size of a scaled image under a pixel budget (the super-resolution workflows' cap)."""
import math

import pytest

from trajir.data.transforms import MEGAPIXEL, capped_size


def test_below_the_cap_the_size_is_scaled_and_rounded_to_multiples_of_16():
    assert capped_size(96, 96, 4.0, 1.0) == (384, 384)
    assert capped_size(240, 384, 1.0, 1.0) == (240, 384)
    assert capped_size(250, 390, 1.0, 1.0) == (240, 384)  # rounded down, never up
    assert capped_size(8, 8, 1.0, 1.0) == (16, 16)  # at least one 16 x 16 block


@pytest.mark.parametrize("size", [(3000, 4000), (4000, 3000), (1024, 1024), (720, 1280), (100, 10000)])
def test_above_the_cap_the_output_never_exceeds_it_and_keeps_the_aspect(size):
    h, w = size
    out_h, out_w = capped_size(h, w, 4.0, 1.0)
    assert out_h * out_w <= MEGAPIXEL and out_h % 16 == 0 and out_w % 16 == 0
    assert out_h * out_w > MEGAPIXEL * 0.9  # close to the cap: rounding loses at most one 16 px row and column
    assert math.isclose(out_w / out_h, w / h, rel_tol=0.1)


def test_a_phone_photo_at_x4_stays_one_megapixel():
    assert capped_size(3000, 4000, 4.0, 1.0) == (880, 1168)  # not 12000 x 16000 = 192 megapixels
    assert capped_size(3000, 4000, 4.0, 2.0) == (1248, 1664)


def test_bad_arguments_are_named():
    with pytest.raises(ValueError, match=r"height must be an integer >= 1, got 0"):
        capped_size(0, 10, 1.0, 1.0)
    with pytest.raises(ValueError, match=r"scale must be a finite number > 0, got nan"):
        capped_size(10, 10, float("nan"), 1.0)
    with pytest.raises(ValueError, match=r"max_megapixels must be a finite number > 0, got -1"):
        capped_size(10, 10, 1.0, -1)
    with pytest.raises(ValueError, match=r"max_megapixels 1e-05 is below one 16x16 block"):
        capped_size(10, 10, 1.0, 1e-5)
