"""python -m trajir.restore and the shipped default restorers: real photos, sizes, PSNR gains, errors."""
import math

import pytest
import torch

from conftest import load_pack
from trajir.compact import load_compact, restore, shipped_models
from trajir.data import degrade, read_image, sample_split, write_png
from trajir.restore import main
from trajir.rewards import score

SHIPPED = shipped_models()


def test_restorers_are_shipped_with_a_model_card():
    assert {"lowlight", "underwater"} <= set(SHIPPED)
    card = (next(iter(SHIPPED.values())).parent / "README.md").read_text()
    for task in SHIPPED:
        assert f"compact_{task}.safetensors" in card


@pytest.mark.parametrize("task", sorted(SHIPPED))
def test_shipped_restorer_improves_a_held_out_photo(task):
    net, recipe = load_compact(SHIPPED[task])
    assert recipe.task == task and recipe.nfe <= 2
    _, held_out = sample_split()
    for photo in held_out:
        gt = read_image(photo)[None]
        lq = degrade(task, gt, 11)
        out = restore(net, recipe, lq, seed=0, tile=192)
        assert out.shape == gt.shape  # any size: 384 x 256 here, tiled
        assert float(score("psnr", out, gt)) > float(score("psnr", lq, gt)) + 1.0


def test_cli_restores_a_file_and_the_demo_reports_psnr(tmp_path, capsys):
    _, held_out = sample_split()
    gt = read_image(held_out[0])[None][..., :200, :280]
    write_png(tmp_path / "dark.png", degrade("lowlight", gt, 3)[0])
    assert main([str(tmp_path / "dark.png"), "--task", "lowlight", "-o", str(tmp_path / "fixed.png")]) == 0
    fixed = read_image(tmp_path / "fixed.png")
    assert fixed.shape == (3, 200, 280)
    assert main(["--demo", "--task", "lowlight", "-o", str(tmp_path / "demo")]) == 0
    out = capsys.readouterr().out
    assert "PSNR" in out and (tmp_path / "demo" / "demo_lowlight.png").is_file()


def test_the_shipped_low_light_restorer_takes_its_colour_from_the_input(tmp_path):
    """The demo photo's colour cast: the colour step brings the channel proportions near the original's."""
    net, recipe = load_compact(SHIPPED["lowlight"])
    assert recipe.colour == "lq_power_law" and load_compact(SHIPPED["underwater"])[1].colour == ""
    _, held_out = sample_split()
    gt = read_image(held_out[0])[None][..., :128, :192]
    lq = degrade("lowlight", gt, 0)

    def proportions(x):
        m = x.mean((0, 2, 3))
        return m / m.sum()
    error = {c: float((proportions(restore(net, recipe, lq, colour=c)) - proportions(gt)).abs().max())
             for c in ("", None)}
    assert error[None] < 0.5 * error[""]
    write_png(tmp_path / "dark.png", lq[0])
    for option in ("off", "model"):
        assert main([str(tmp_path / "dark.png"), "--task", "lowlight", "--colour", option,
                     "-o", str(tmp_path / f"{option}.png")]) == 0
    off, default = read_image(tmp_path / "off.png"), read_image(tmp_path / "model.png")
    assert float((proportions(default[None]) - proportions(gt)).abs().max()) < error[""]
    assert not torch.allclose(off, default, atol=0.02)


def test_cli_errors_name_the_problem(tmp_path):
    with pytest.raises(SystemExit, match="no shipped restorer for task 'sky'"):
        main(["x.png", "--task", "sky"])
    with pytest.raises(SystemExit, match="model file not found: .*nope.safetensors"):
        main(["x.png", "--model", str(tmp_path / "nope.safetensors")])
    with pytest.raises(SystemExit):
        main([])


def test_compact_restore_node_offers_the_shipped_models():
    node = load_pack().NODE_CLASS_MAPPINGS["TrajIRCompactRestore"]
    choices = node.INPUT_TYPES()["required"]["model"][0]
    assert [c for c in choices if c.endswith(" (shipped)")] == [f"{t} (shipped)" for t in SHIPPED]
    from trajir_pack.nodes.compact_restore import model_file
    assert model_file("lowlight (shipped)") == str(SHIPPED["lowlight"])
    with pytest.raises(ValueError, match="no shipped restorer for task 'sky'"):
        model_file("sky (shipped)")


@pytest.mark.parametrize("tile", [32, 33, 40, 64, 100, 256])
@pytest.mark.parametrize("length", [32, 97, 300, 4000])
def test_tiles_cover_the_image_and_their_count_stays_near_length_over_tile(tile, length):
    """The default blending width is min(32, tile // 4), so tiles step by at least 3/4 of a tile: a 33 px tile
    once stepped by 1 px (98,600 tiles for a 400 x 300 photo)."""
    from trajir.tiling import tile_overlap, tile_starts

    overlap = tile_overlap(tile)
    assert overlap == min(32, tile // 4)
    starts = tile_starts(length, tile, overlap)
    assert starts[0] == 0 and starts[-1] == max(0, length - tile)
    assert all(b - a <= tile - overlap for a, b in zip(starts, starts[1:]))  # neighbours overlap by >= overlap
    assert len(starts) < 4 / 3 * length / tile + 1  # ceil((L - o) / (t - o)) with t - o >= 3 t / 4
    if length > tile:
        assert len(starts) >= math.ceil(length / tile)


def test_tile_settings_that_cannot_work_are_refused():
    from trajir.tiling import tile_overlap

    assert tile_overlap(0) == 0 and tile_overlap(256) == 32 and tile_overlap(64, 32) == 32
    for tile in (1, 31, -1, 2.5, True):
        with pytest.raises(ValueError, match=r"tile must be 0 \(the whole image at once\) or at least 32 px"):
            tile_overlap(tile)
    for overlap in (-1, 33, 1.5):
        with pytest.raises(ValueError, match=r"overlap must be >= 0 and at most tile // 2 \(32 for tile 64\)"):
            tile_overlap(64, overlap)
    with pytest.raises(ValueError, match=r"--tile must be 0"):
        tile_overlap(7, name="--tile")


def test_seeds_are_integers_of_64_bits(tmp_path):
    net, recipe = load_compact(SHIPPED["lowlight"])
    lq = torch.rand(1, 3, 16, 16, generator=torch.Generator().manual_seed(0))
    top = restore(net, recipe, lq, seed=2**64 - 1)
    assert torch.isfinite(top).all() and not torch.equal(top, restore(net, recipe, lq, seed=0))
    for seed in (-1, 2**64, 1.5, "3"):
        with pytest.raises(ValueError, match=r"seed must be an integer in \[0, 2\^64 - 1\]"):
            restore(net, recipe, lq, seed=seed)
