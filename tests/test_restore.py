"""python -m trajir.restore and the shipped default restorers: real photos, sizes, PSNR gains, errors."""
import pytest

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
