"""The nodes against real ComfyUI code (library mode, docs/comfyui.md §8): a tiny random FLUX and a tiny 16-channel
VAE, our nodes driven through ComfyUI's own SamplerCustomAdvanced / SamplerCustom / CFGGuider / BasicGuider.

One child process (``comfy_harness.inprocess_results``) imports ComfyUI once and measures everything; the tests
below assert on its numbers. Skipped without $COMFYUI_PATH.
"""
import math
import re

import pytest
from comfy_harness import inprocess_results
from conftest import comfyui_path, requires_comfyui

pytestmark = requires_comfyui


@pytest.fixture(scope="session")
def results(tmp_path_factory):
    return inprocess_results(comfyui_path(), tmp_path_factory.mktemp("comfy_output"))


def _check(results, name):
    out = results[name]
    assert "crash" not in out, out.get("crash")
    return out


def test_msde_with_eta_0_equals_comfy_euler_under_both_custom_samplers(results):
    out = _check(results, "sampler")
    assert out["eta0_vs_euler_advanced"] == 0.0
    assert out["eta0_vs_euler_custom"] == 0.0
    # progress comes only through ComfyUI's callback: one event per step, no second bar of ours
    assert out["progress_events"] == out["steps"]


def test_msde_with_eta_is_stochastic_seeded_and_windowed(results):
    out = _check(results, "sampler")
    assert out["eta1_finite"]
    assert out["eta1_repeat"] == 0.0
    assert out["eta1_vs_euler"] > 1e-2
    assert out["eta1_other_seed"] > 1e-2
    assert out["empty_window_vs_euler"] == 0.0
    assert "percent needs 0 <= start <= end <= 1" in out["bad_window_error"]


def test_msde_detects_the_parameterisation_of_the_model(results):
    out = _check(results, "sampler")
    assert out["params"] == ["rf", "ve", "ve"]  # FLUX (CONST), eps, v-prediction
    assert out["eps_sigma_max"] > 10  # the EPS schedule really is VE-shaped
    assert out["eps_eta0_vs_euler"] == 0.0
    assert out["eps_eta1_finite"] and out["eps_eta1_vs_euler"] > 1e-2
    assert out["cosmos_error"].startswith("unsupported model sampling")


def test_negative_lq_guidance_w0_equals_cfg_guider_hooks_included(results):
    out = _check(results, "guider")
    assert out["w0_vs_cfg"] == 0.0
    assert out["w0_vs_cfg_with_hooks"] == 0.0
    assert out["hooks_change_output"] > 1e-3  # the pre/post-CFG hooks did act...
    assert out["hook_calls_total"] == {k: 2 * v for k, v in out["hook_calls_cfg"].items()}  # ...once per step each


def test_negative_lq_guidance_is_eq20_in_x0_space(results):
    out = _check(results, "guider")
    assert out["ngs_vs_formula"] < 1e-5  # (1 + w) x0 - w y, y = process_latent_in(LQ)
    assert out["ngs_vs_cfg"] > 1e-2
    assert out["outside_window_vs_cfg"] == 0.0
    assert re.search(r"lq_latent has shape \(1, 16, 8, 8\) but the latent being sampled has shape \(1, 16, 12, 12\)",
                     out["size_error"])
    assert "lq_latent has 4 channels but the model expects 16" in out["channel_error"]


def test_lq_initial_state_starts_samplercustomadvanced_at_eq17(results):
    out = _check(results, "initial_state")
    assert out["t_start"] == out["schedule_t1"]
    assert out["eq17"] < 1e-6
    assert out["eq17_weight"] < 1e-5
    assert math.isclose(out["sigma_mode_first"], 0.8, rel_tol=1e-6)
    assert out["sigma_mode_rest"] == [s for s in out["schedule"] if s < 0.8]
    assert "lq_latent has 4 channels but the model expects 16" in out["channel_error"]
    assert out["ve_weight_error"].startswith("lq_weight applies to rectified-flow models")


def test_best_of_n_returns_the_top_scoring_candidate(results):
    out = _check(results, "best_of_n")
    assert out["n_images"] == 4  # the ODE + 3 branches
    assert out["best"] == max(range(4), key=lambda n: out["psnr"][n])
    assert out["best_image_vs_candidate"] == 0.0
    assert out["candidate0_vs_euler"] < 1e-4  # candidate 0 is the ODE trajectory (batched with the branches)
    assert out["candidates_distinct"] > 1e-3
    rows = [line.split() for line in out["table"].splitlines()[1:5]]
    assert [r[-1] == "*" for r in rows] == [n == out["best"] for n in range(4)]
    assert out["best_latent_shape"] == [1, 16, 8, 8]
    assert out["throughout_images"] == 3 and out["throughout_candidate0_vs_euler"] < 1e-4


def test_best_of_n_saves_the_best_branch_inside_the_output_folder(results):
    out = _check(results, "best_of_n")
    assert out["saved_inside_output"] and out["saved_path"].endswith("trajir/branches/test.safetensors")
    assert (out["record_t"], out["record_t_next"]) == (out["cut"][1], out["cut"][2])  # branch_step 1
    assert out["record_reward"] == pytest.approx(out["psnr"][out["best"]] / 50, rel=1e-5)  # the psnr preset
    assert out["record_shape"] == [1, 16, 8, 8]
    # what the trainer's rl.records needs: the winner's eta (0 = the ODE won) and the step's conditioning
    assert out["record_eta"] == (0.0 if out["best"] == 0 else 1.0)
    assert {"context", "pooled", "guidance", "eta"} <= set(out["record_keys"])
    assert out["record_context_shape"][0] == 1
    assert "contains '..'" in out["dotdot_error"]
    assert "is an absolute path" in out["absolute_error"]


def test_best_of_n_bad_input_errors(results):
    out = _check(results, "best_of_n")
    assert out["n0_error"] == "candidates must be an integer >= 1, got 0"
    assert "latent_image has 4 channels but the model expects 16" in out["channel_error"]
    assert "full-reference metric" in out["reference_error"]
    assert out["branch_step_error"].startswith("branch_step must lie in [0, 3]")
    assert "lq_latent has shape (1, 16, 6, 6) but the latent being sampled has shape" in out["lq_size_error"]
    assert out["fraction_error"] == "branch_fraction must lie in [0, 1] (a fraction of the schedule), got 1.5"


def test_best_of_n_branches_at_a_fraction_of_any_schedule(results):
    out = _check(results, "best_of_n")
    steps = len(out["cut"]) - 1  # 5: branch_fraction 0.5 is step floor(2.5) = 2 (branch_step 99 is ignored)
    assert steps == 5
    assert (out["fraction_record_t"], out["fraction_record_t_next"]) == (out["cut"][2], out["cut"][3])


def test_our_nodes_take_5d_video_vae_latents(results):
    """Qwen-Image / Wan latents [B, C, 1, h, w]: Eq. (17), Eq. (20) and a full M-SDE run, through ComfyUI."""
    out = _check(results, "video_latents")
    assert out["latent_shape"] == [1, 16, 1, 8, 8]
    assert out["eq17"] < 1e-5
    assert out["ngs_vs_formula"] < 1e-5 and out["ngs_vs_cfg"] > 1e-3
    assert out["sampled_shape"] == [1, 16, 1, 8, 8] and out["sampled_finite"]
    assert out["rank3_error"].startswith("lq_latent must hold image latents [batch, channels, height, width] or "
                                         "video-VAE latents [batch, channels, frames, height, width], got shape "
                                         "(16, 8, 8)")


def test_scale_with_cap_resizes_with_comfyui_and_never_exceeds_the_cap(results):
    out = _check(results, "scale_with_cap")
    assert out["free_shape"] == [1, 96, 80, 3] and out["free_vs_comfy"] == 0.0
    # x4 of 48 x 40 would be 192 x 160 = 30720 pixels; the cap of 0.01 MP (10486 pixels) shrinks it to 112 x 80
    assert out["capped_shape"] == [1, 112, 80, 3] and out["expected_capped"] == [112, 80]
    assert out["method_error"].startswith("upscale_method must be one of")


def test_an_interrupt_stops_within_one_model_call(results):
    out = _check(results, "interrupt")
    # Cancel is pressed during the 2nd model call; the next one never starts
    assert out["sampler"] == {"interrupted": True, "calls": 2}
    assert out["best_of_n"] == {"interrupted": True, "calls": 2}


def test_save_conditioning_round_trips_and_never_overwrites(results):
    out = _check(results, "save_conditioning")
    assert out["first"] == "trajir/prompts/test.safetensors"
    assert out["second"] == "trajir/prompts/test_00001.safetensors"
    assert out["context_diff"] == 0.0 and out["pooled_diff"] == 0.0
    assert out["guidance"] == 3.5 and out["prompt"] == "sharp, deblurred, clear"
    assert "contains '..'" in out["dotdot_error"]
    assert "is an absolute path" in out["absolute_error"]
    assert out["not_flux_error"].startswith("not a FLUX conditioning")


def test_compact_restore_runs_the_shipped_restorer_inside_comfyui(results):
    out = _check(results, "compact_restore")
    assert out["choice"].endswith(" (shipped)")
    assert out["shape"] == [2, 64, 64, 3]       # ComfyUI IMAGE layout, the input's size
    assert out["vs_library"] < 1e-5             # the node is trajir.compact.restore, image by image (float32
                                                # convolutions on other memory layouts round differently)
    assert out["progress_events"] == 2          # one per image
