"""Node adapters that run without ComfyUI: IMAGE conversion, LATENT checks (4-D and 5-D), safe output paths, Save
Conditioning, the Reward Scorer, the Best-of-N score table and its relative branch step, Sample Image and the LQ
Initial State on video-VAE latents. ComfyUI's ``folder_paths`` is replaced by a stand-in module naming a
temporary output folder."""
import importlib
import math
import os
import sys
import types

import pytest
import torch
from conftest import load_pack

PACK = load_pack()
bridge = importlib.import_module("trajir_pack.nodes.comfy_bridge")
reward_node = importlib.import_module("trajir_pack.nodes.reward")
best_of_n = importlib.import_module("trajir_pack.nodes.best_of_n")
conditioning = importlib.import_module("trajir_pack.trajir.conditioning")


@pytest.fixture
def output_dir(tmp_path, monkeypatch):
    """A stand-in ``folder_paths`` whose output folder is ``tmp_path / "output"``."""
    out = tmp_path / "output"
    out.mkdir()
    monkeypatch.setitem(sys.modules, "folder_paths", types.SimpleNamespace(get_output_directory=lambda: str(out)))
    return out


def test_image_conversion_round_trip():
    image = torch.rand(2, 5, 7, 3)
    x = bridge.image_to_bchw("images", image)
    assert x.shape == (2, 3, 5, 7) and torch.equal(x[:, 1], image[..., 1])
    assert torch.equal(bridge.bchw_to_image(x), image)
    assert bridge.image_to_bchw("images", torch.rand(1, 4, 4, 4)).shape == (1, 3, 4, 4)  # alpha dropped
    grey = bridge.image_to_bchw("images", torch.rand(1, 4, 4, 1))
    assert torch.equal(grey[:, 0], grey[:, 2])
    with pytest.raises(ValueError, match=r"images must be a ComfyUI IMAGE \[batch, height, width, 1/3/4 channels\], "
                                         r"got \(1, 3, 8, 8\)"):
        bridge.image_to_bchw("images", torch.rand(1, 3, 8, 8))  # [B, C, H, W] is not an IMAGE


def test_latent_checks():
    assert bridge.latent_samples("lq", {"samples": torch.zeros(1, 16, 2, 2)}, 16).shape == (1, 16, 2, 2)
    with pytest.raises(ValueError, match=r"lq has 4 channels but the model expects 16 \(shape \(1, 4, 2, 2\)\)"):
        bridge.latent_samples("lq", {"samples": torch.zeros(1, 4, 2, 2)}, 16)
    with pytest.raises(ValueError, match="lq must be a LATENT"):
        bridge.latent_samples("lq", torch.zeros(1, 4, 2, 2))
    with pytest.raises(ValueError, match=r"lq must hold image latents \[batch, channels, height, width\]"):
        bridge.latent_samples("lq", {"samples": torch.zeros(1, 16, 2, 2, 2)})
    video = {"samples": torch.zeros(1, 16, 1, 2, 2)}  # Qwen-Image / Wan VAE: [B, C, T, h, w]
    assert bridge.latent_samples("lq", video, 16, frames=True).shape == (1, 16, 1, 2, 2)
    with pytest.raises(ValueError, match=r"lq has 4 channels but the model expects 16 \(shape \(1, 4, 1, 2, 2\)\)"):
        bridge.latent_samples("lq", {"samples": torch.zeros(1, 4, 1, 2, 2)}, 16, frames=True)
    with pytest.raises(ValueError, match=r"or video-VAE latents \[batch, channels, frames, height, width\], got shape "
                                         r"\(16, 2, 2\)"):
        bridge.latent_samples("lq", {"samples": torch.zeros(16, 2, 2)}, 16, frames=True)


def test_output_paths_stay_inside_and_never_overwrite(tmp_path):
    root = tmp_path / "out"
    root.mkdir()
    path = bridge.resolve_output_path(root, "trajir/branches/run")
    assert path == os.path.join(os.path.realpath(root), "trajir", "branches", "run.safetensors")
    assert bridge.resolve_output_path(root, "a.safetensors") == os.path.join(os.path.realpath(root), "a.safetensors")
    os.makedirs(os.path.dirname(path))
    open(path, "w").close()
    assert bridge.resolve_output_path(root, "trajir/branches/run").endswith("run_00001.safetensors")
    open(path.replace("run.", "run_00001."), "w").close()
    assert bridge.resolve_output_path(root, "trajir/branches/run").endswith("run_00002.safetensors")


@pytest.mark.parametrize("name, message", [
    ("", "the file name is empty"),
    ("   ", "the file name is empty"),
    ("../x", "contains '..'"),
    ("a/../../x", "contains '..'"),
    ("a\\..\\x", "contains '..'"),
    ("/etc/x", "is an absolute path"),
    ("\\\\server\\x", "is an absolute path"),
    ("C:/x", "is an absolute path"),
    ("a\x00b", "NUL character"),
])
def test_unsafe_output_names_are_refused(tmp_path, name, message):
    with pytest.raises(ValueError, match=message):
        bridge.resolve_output_path(tmp_path, name)


def test_a_symlink_out_of_the_output_folder_is_refused(tmp_path):
    root, outside = tmp_path / "out", tmp_path / "elsewhere"
    root.mkdir(), outside.mkdir()
    (root / "link").symlink_to(outside, target_is_directory=True)
    with pytest.raises(ValueError, match="resolves to .* outside ComfyUI's output folder"):
        bridge.resolve_output_path(root, "link/x")


def _flux_conditioning(tokens=3, guidance=4.0):
    g = torch.Generator().manual_seed(0)
    return [[torch.randn(1, tokens, 4096, generator=g), {"pooled_output": torch.randn(1, 768, generator=g),
                                                         "guidance": guidance}]]


def test_save_conditioning_writes_what_the_trainer_reads(output_dir):
    node = PACK.NODE_CLASS_MAPPINGS["TrajIRSaveConditioning"]()
    cond = _flux_conditioning()
    out = node.save(cond, "trajir/prompts/sr", "high-resolution, ultra-sharp, detailed")
    path = out["result"][0]
    assert out["ui"]["text"] == [path] and path == str(output_dir / "trajir" / "prompts" / "sr.safetensors")
    loaded = conditioning.load_conditioning(path)
    assert torch.equal(loaded["context"], cond[0][0][0]) and torch.equal(loaded["pooled"], cond[0][1]["pooled_output"][0])
    assert loaded["guidance"] == 4.0 and loaded["prompt"] == "high-resolution, ultra-sharp, detailed"
    again = node.save(_flux_conditioning(guidance=2.0), "trajir/prompts/sr")["result"][0]
    assert again.endswith("sr_00001.safetensors")
    assert conditioning.load_conditioning(path)["guidance"] == 4.0  # the first file is untouched


@pytest.mark.parametrize("cond, message", [
    ([], "conditioning must be a non-empty CONDITIONING list"),
    (_flux_conditioning() * 2, "conditioning holds 2 entries; save one prompt at a time"),
    ([[torch.zeros(2, 3, 4096), {"pooled_output": torch.zeros(2, 768)}]], r"must be \[1, tokens, dim\]"),
    ([[torch.zeros(1, 77, 768), {}]], "not a FLUX conditioning"),
    ([[torch.zeros(1, 3, 4096), {"pooled_output": torch.zeros(1, 1280)}]], "not a FLUX conditioning"),
])
def test_save_conditioning_refuses_what_is_not_one_flux_prompt(output_dir, cond, message):
    with pytest.raises(ValueError, match=message):
        PACK.NODE_CLASS_MAPPINGS["TrajIRSaveConditioning"]().save(cond, "x")
    assert not any(output_dir.iterdir())


def test_save_conditioning_refuses_paths_outside_the_output_folder(output_dir):
    node = PACK.NODE_CLASS_MAPPINGS["TrajIRSaveConditioning"]()
    for name in ("../escape", str(output_dir / "abs")):
        with pytest.raises(ValueError, match="contains '..'|is an absolute path"):
            node.save(_flux_conditioning(), name)
    assert not any(output_dir.iterdir())


def _photos():
    g = torch.Generator().manual_seed(0)
    clean = torch.rand(2, 32, 32, 3, generator=g)
    noisy = (clean + 0.05 * torch.randn(clean.shape, generator=g)).clamp(0, 1)
    return clean, noisy


def test_reward_scorer_psnr_matches_the_closed_form():
    clean, noisy = _photos()
    out = PACK.NODE_CLASS_MAPPINGS["TrajIRRewardScorer"]().score(noisy, "psnr", "", clean)
    mean, table, reward = out["result"]
    psnr = 10 * torch.log10(1 / ((noisy - clean) ** 2).mean(dim=(1, 2, 3)))
    assert mean == pytest.approx(float(psnr.mean()) / 50, rel=1e-5)  # the psnr preset normalises by 50 dB
    assert out["ui"]["text"] == [table]
    rows = table.splitlines()
    assert rows[0].split() == ["image", "psnr", "(dB)", "reward"] and len(rows) == 3
    assert float(rows[1].split()[1]) == pytest.approx(float(psnr[0]), abs=1e-4)
    assert reward.needs_reference and reward.weights == {"psnr": 1.0}


def test_reward_scorer_custom_weights_and_single_metrics():
    clean, noisy = _photos()
    node = PACK.NODE_CLASS_MAPPINGS["TrajIRRewardScorer"]()
    mixed = node.score(noisy, "custom", "psnr=1; ssim = 3", clean)["result"]
    psnr = float(node.score(noisy, "psnr", "", clean)["result"][0])
    ssim = float(node.score(noisy, "ssim", "", clean)["result"][0])
    assert mixed[0] == pytest.approx((psnr + 3 * ssim) / 4, rel=1e-5)
    assert mixed[2].weights == {"psnr": 1.0, "ssim": 3.0}
    uciqe = node.score(noisy, "uciqe", "")["result"]  # no-reference: no reference needed
    assert math.isfinite(uciqe[0]) and not uciqe[2].needs_reference


@pytest.mark.parametrize("metric, weights, message", [
    ("custom", "", "weights is empty: with metric 'custom' give name=weight pairs"),
    ("custom", "sharpness=1", r"unknown metric\(s\) \['sharpness'\] in weights"),
    ("custom", "psnr", "weights entry 'psnr' is not name=weight"),
    ("custom", "psnr=high", "'high' is not a number"),
    ("custom", "psnr=-1", "the weight must be finite and >= 0"),
    ("custom", "psnr=0, ssim=0", "are all zero"),
    ("custom", "psnr=1, PSNR=2", "weights names 'psnr' twice"),
    ("brisque", "", "unknown metric 'brisque'"),
])
def test_reward_scorer_bad_selection(metric, weights, message):
    clean, noisy = _photos()
    with pytest.raises(ValueError, match=message):
        PACK.NODE_CLASS_MAPPINGS["TrajIRRewardScorer"]().score(noisy, metric, weights, clean)


def test_reward_scorer_needs_a_reference_for_full_reference_metrics():
    _, noisy = _photos()
    with pytest.raises(ValueError, match="metric 'psnr' is full-reference; connect the ground truth to 'reference'"):
        PACK.NODE_CLASS_MAPPINGS["TrajIRRewardScorer"]().score(noisy, "psnr", "", None)


@pytest.fixture
def comfy_models(tmp_path, monkeypatch):
    """A stand-in ``folder_paths`` with ComfyUI's model-folder registry; restores the rewards' iqa folders."""
    from trajir_pack.trajir import rewards

    registry = {}
    fake = types.SimpleNamespace(
        models_dir=str(tmp_path / "models"), folder_names_and_paths=registry,
        add_model_folder_path=lambda name, path, is_default=False: registry.setdefault(name, ([], set()))[0].append(
            path),
        get_folder_paths=lambda name: list(registry[name][0]))
    monkeypatch.setitem(sys.modules, "folder_paths", fake)
    monkeypatch.delenv("TRAJIR_IQA_DIR", raising=False)
    before = rewards.iqa_dirs()
    yield tmp_path / "models"
    rewards.set_default_iqa_dirs(before)


def test_inside_comfyui_learned_metrics_look_in_models_iqa(comfy_models):
    pytest.importorskip("pyiqa", reason="the learned metrics need the optional pyiqa")
    assert bridge.register_model_folder("iqa")
    assert bridge.iqa_dirs() == [str(comfy_models / "iqa")]
    _, noisy = _photos()
    with pytest.raises(FileNotFoundError, match=r"musiq needs the weight file 'musiq_koniq_ckpt-e95806b9.pth', "
                                                r"not found in .*models/iqa"):
        PACK.NODE_CLASS_MAPPINGS["TrajIRRewardScorer"]().score(noisy, "musiq", "")


def test_best_of_n_score_table_marks_the_best_per_image():
    scores = torch.tensor([[0.5, 0.2], [0.7, 0.1], [0.6, 0.2]])
    table = best_of_n.score_table(scores, torch.tensor([1, 0]), [0.0, 0.8, 0.3])
    rows = [line.split() for line in table.splitlines()]
    assert rows[0] == ["image", "candidate", "eta", "reward"]
    assert rows[1] == ["0", "ode", "0.000", "0.5"] and rows[2] == ["0", "1", "0.800", "0.7", "*"]
    assert rows[4] == ["1", "ode", "0.000", "0.2", "*"]
    assert sum(r[-1] == "*" for r in rows) == 2


@pytest.mark.parametrize("steps, fraction, expected", [(20, 0.25, 5), (4, 0.25, 1), (3, 0.25, 0), (5, 1.0, 3),
                                                       (2, 0.9, 0), (21, 0.0, 0)])
def test_best_of_n_branch_step_as_a_fraction_fits_any_schedule(steps, fraction, expected):
    assert best_of_n.resolve_branch_step("fraction", 99, fraction, steps) == expected
    assert best_of_n.resolve_branch_step("step", 7, fraction, steps) == 7  # the absolute step is passed on
    with pytest.raises(ValueError, match=r"branch_fraction must lie in \[0, 1\]"):
        best_of_n.resolve_branch_step("fraction", 0, -0.1, steps)
    with pytest.raises(ValueError, match=r"branch_at must be one of \('step', 'fraction'\), got 'percent'"):
        best_of_n.resolve_branch_step("percent", 0, 0.5, steps)


def test_sample_image_gives_the_bundled_photo_and_its_degradation():
    from trajir_pack.trajir.data import degrade_at_strength
    from trajir_pack.trajir.data.samples import load_sample

    node = PACK.NODE_CLASS_MAPPINGS["TrajIRSampleImage"]()
    lq, gt = node.run("coffee", "underwater", 0.7, 5, 0, 1)
    assert lq.shape == gt.shape == (1, 256, 384, 3) and lq.dtype == torch.float32
    expected = degrade_at_strength("underwater", load_sample("coffee"), 5, 0.7)
    assert torch.allclose(lq, expected.permute(0, 2, 3, 1), atol=1e-6)
    small, full = node.run("astronaut", "sr", 0.5, 0, 192, 4)
    assert small.shape == (1, 48, 48, 3) and full.shape == (1, 192, 192, 3)
    own = torch.rand(2, 40, 50, 3)
    lq, gt = node.run("coffee", "none", 0.5, 0, 0, 1, own)  # a connected image replaces the photo
    assert torch.equal(lq, gt) and torch.equal(gt, own[:, 4:36, 1:49])


def test_sample_image_offers_every_photo_and_task():
    required = PACK.NODE_CLASS_MAPPINGS["TrajIRSampleImage"].INPUT_TYPES()["required"]
    from trajir_pack.trajir.data import TASKS
    from trajir_pack.trajir.data.samples import sample_names

    assert required["photo"][0] == sample_names() and required["task"][0] == ["none", *TASKS]


class _LatentFormat:
    latent_channels = 16

    @staticmethod
    def process_in(z):
        return (z - 0.1) * 2.0

    @staticmethod
    def process_out(z):
        return z / 2.0 + 0.1


class _Model:
    def get_model_object(self, name):
        assert name == "latent_format"
        return _LatentFormat()


def test_lq_initial_state_takes_video_vae_latents():
    node = PACK.NODE_CLASS_MAPPINGS["TrajIRLQInitialState"]()
    samples = torch.randn(2, 16, 1, 4, 4)
    sigmas = torch.tensor([1.0, 0.8, 0.5, 0.0])
    latent, cut = node.run(_Model(), {"samples": samples}, sigmas, "step", 1, 0.97)
    assert latent["samples"] is samples and torch.equal(cut, sigmas[1:])


def test_negative_lq_guidance_tiles_5d_lq_latents_to_the_batch():
    guider = importlib.import_module("trajir_pack.nodes.guider")
    lq = torch.randn(1, 16, 1, 4, 4)
    tiled = guider.lq_for_batch(lq, torch.zeros(3, 16, 1, 4, 4))
    assert tiled.shape == (3, 16, 1, 4, 4) and torch.equal(tiled[2], lq[0])
    with pytest.raises(ValueError, match=r"lq_latent has shape \(1, 16, 1, 4, 4\) but the latent being sampled has "
                                         r"shape \(3, 16, 1, 8, 8\)"):
        guider.lq_for_batch(lq, torch.zeros(3, 16, 1, 8, 8))
