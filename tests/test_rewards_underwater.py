"""UCIQE and UIQM against values worked out by hand on synthetic images (formulas: underwater.py docstring)."""
import math

import pytest
import torch

from trajir.rewards import score, underwater

C1, C2, C3 = underwater.UIQM_WEIGHTS


def solid(rgb, h=20, w=20):
    return torch.tensor(rgb, dtype=torch.float32).view(1, 3, 1, 1).expand(1, 3, h, w).clone()


def test_uiqm_of_a_solid_colour_is_its_colour_offset():
    # no edges (UISM 0), no contrast (UIConM 0), no spread: UICM = -0.0268 |trimmed means|
    r, g, b = 0.8, 0.4, 0.2
    rg, yb = 255 * (r - g), 255 * ((r + g) / 2 - b)
    expected = C1 * (-0.0268 * math.hypot(rg, yb))
    assert score("uiqm", solid((r, g, b))).item() == pytest.approx(expected, rel=1e-5)


def test_uiqm_of_a_pixel_checkerboard_is_pure_contrast():
    # grey (UICM 0); Sobel vanishes inside a 1-px checkerboard, so every 10x10 block has a zero edge (UISM 0);
    # every block spans both levels: q = (a - b) / (a + b), UIConM = -q log q
    a, b = 0.6, 0.2
    i, j = torch.meshgrid(torch.arange(20), torch.arange(20), indexing="ij")
    img = torch.where((i + j) % 2 == 0, a, b).float().expand(1, 3, 20, 20).clone()
    q = (a - b) / (a + b)
    assert score("uiqm", img).item() == pytest.approx(C3 * -q * math.log(q), rel=1e-5)


def test_uiqm_of_a_horizontal_ramp():
    # I(x) = c (x + 1) in every row and channel, W = 30: three 10x10 blocks.
    # Sobel x-response (weights 1-2-1 across, -1/+1 along): 8c inside, 4c at the replicated borders; none along y.
    # Edge map e(x) = I(x) |grad|: block 0: e(0) = 4c^2, e(9) = 80c^2; block 1: 88c^2 .. 160c^2;
    # block 2: e(20..28) = 168c^2 .. 232c^2 and e(29) = 4c * 30c = 120c^2.
    c = 1 / 32
    x = torch.arange(30, dtype=torch.float32)
    img = (c * (x + 1)).view(1, 1, 1, 30).expand(1, 3, 10, 30).clone()
    eme = 2 / 3 * (math.log(80 / 4) + math.log(160 / 88) + math.log(232 / 120))
    uism = (0.299 + 0.587 + 0.114) * eme
    q = [9 / 11, 9 / 31, 9 / 51]  # (max - min) / (max + min) per block: (10-1)/(10+1), (20-11)/(20+11), (30-21)/(30+21)
    uiconm = -sum(v * math.log(v) for v in q) / 3
    assert underwater.uism(img * 255).item() == pytest.approx(uism, rel=1e-5)
    assert score("uiqm", img).item() == pytest.approx(C2 * uism + C3 * uiconm, rel=1e-5)


@pytest.mark.parametrize("reds", [5, 15])
def test_uicm_uses_alpha_trimmed_means(reds):
    # 100 pixels: `reds` pure red (RG = 255, YB = 127.5), the rest grey (RG = YB = 0). Sorted, the trimmed mean
    # keeps ranks 10..89: the 80 kept values hold max(0, reds - 10) red ones.
    img = torch.full((1, 3, 10, 10), 0.5)
    img.view(1, 3, 100)[:, :, :reds] = torch.tensor([1.0, 0.0, 0.0]).view(1, 3, 1)
    kept_reds = max(0, reds - 10)
    terms = []
    for value in (255.0, 127.5):
        mu = kept_reds * value / 80
        var = (reds * (value - mu) ** 2 + (100 - reds) * mu**2) / 100
        terms.append((mu, var))
    expected = -0.0268 * math.hypot(terms[0][0], terms[1][0]) + 0.1586 * math.sqrt(terms[0][1] + terms[1][1])
    assert underwater.uicm(img * 255).item() == pytest.approx(expected, rel=1e-5)


def test_uciqe_of_two_colours():
    color = pytest.importorskip("skimage.color", reason="scikit-image gives the independent CIELab values")
    c1, c2 = (0.2, 0.5, 0.7), (0.9, 0.8, 0.3)
    img = torch.cat([solid(c1, 20, 10), solid(c2, 20, 10)], dim=-1)  # half and half
    (l1, a1, b1), (l2, a2, b2) = (color.rgb2lab([[c]])[0, 0] / 100 for c in (c1, c2))
    ch1, ch2 = math.hypot(a1, b1), math.hypot(a2, b2)
    sigma_c = abs(ch1 - ch2) / 2  # population std of two equal halves
    con_l = abs(l1 - l2)  # the brightest 1 % is all one colour, the darkest 1 % the other
    mu_s = (ch1 / l1 + ch2 / l2) / 2
    expected = 0.4680 * sigma_c + 0.2745 * con_l + 0.2576 * mu_s
    assert score("uciqe", img).item() == pytest.approx(expected, abs=1e-4)


def test_uciqe_contrast_averages_the_extreme_percent():
    # 200 grey pixels: k = 2 pixels make 1 %. Brightest two: 1.0 and 0.9; darkest two: 0.0 and 0.1.
    color = pytest.importorskip("skimage.color", reason="scikit-image gives the independent CIELab values")
    values = torch.full((200,), 0.5)
    values[:4] = torch.tensor([1.0, 0.9, 0.0, 0.1])
    img = values.view(1, 1, 10, 20).expand(1, 3, 10, 20).clone()
    light = {v: color.rgb2lab([[[v, v, v]]])[0, 0, 0] / 100 for v in (1.0, 0.9, 0.0, 0.1)}
    con_l = (light[1.0] + light[0.9]) / 2 - (light[0.0] + light[0.1]) / 2
    assert score("uciqe", img).item() == pytest.approx(0.2745 * con_l, abs=1e-4)  # grey: no chroma


@pytest.mark.parametrize("photo", ["astronaut", "coffee", "chelsea", "rocket"])
def test_a_washed_out_blue_cast_lowers_uciqe_and_colourfulness(photo):
    from conftest import sample_photo

    x = sample_photo(photo, (64, 96))
    cast = 0.5 * x + torch.tensor([0.05, 0.25, 0.35]).view(1, 3, 1, 1)
    assert score("uciqe", x).item() > score("uciqe", cast).item()
    assert underwater.uicm(x * 255).item() > underwater.uicm(cast * 255).item()


def test_uiqm_needs_one_block():
    with pytest.raises(ValueError, match=r"images is 9x40 pixels; UIQM needs images of at least 10x10"):
        score("uiqm", torch.rand(1, 3, 9, 40))
