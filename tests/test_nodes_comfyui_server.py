"""The pack inside a real ComfyUI server (``main.py --cpu``, shared by the session): it loads, ``/object_info``
lists our nodes, the workflows are served as templates with their thumbnails, the web extension is served, and a
bad input comes back as execution_error (the tiny test nodes of ``comfy_probe_pack.py`` stand in for FLUX). The
shipped workflows run in ``test_workflows_comfyui.py``.

The server gets a temporary ``--base-directory`` whose ``custom_nodes`` links this repository (nothing is written
into the ComfyUI checkout). Skipped without $COMFYUI_PATH.
"""
import json
from urllib.parse import quote

import pytest
from conftest import REPO, load_pack, requires_comfyui

pytestmark = requires_comfyui
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
OURS = load_pack().NODE_CLASS_MAPPINGS


@pytest.fixture(scope="module")
def server(comfy_server):
    return comfy_server


@pytest.fixture(scope="module")
def object_info(server):
    return server.get("/object_info")


def test_the_pack_loads_without_import_failure(server, object_info):
    log = server.log_text()
    ours = [line for line in log.splitlines() if line.rstrip().endswith("custom_nodes/trajir")]
    assert ours and all("IMPORT FAILED" not in line for line in ours), log[-3000:]  # ComfyUI's import-time list
    assert "Cannot import" not in "".join(line for line in log.splitlines() if "custom_nodes/trajir" in line)
    assert "TrajIRTestTinyFlux" in object_info  # the probe nodes loaded as well


@pytest.mark.parametrize("name", sorted(OURS))
def test_object_info_lists_our_node_with_its_types(object_info, name):
    info, cls = object_info[name], OURS[name]
    assert info["output"] == list(cls.RETURN_TYPES)
    assert info["output_name"] == list(cls.RETURN_NAMES)
    assert info["category"] == cls.CATEGORY
    assert info["display_name"].startswith("TrajIR ")
    declared = cls.INPUT_TYPES()
    for section in ("required", "optional"):
        assert list(info["input"].get(section, {})) == list(declared.get(section, {}))
        for key, spec in declared.get(section, {}).items():
            assert info["input"][section][key][0] == (list(spec[0]) if isinstance(spec[0], (list, tuple))
                                                      else spec[0])


def test_workflows_are_listed_and_served_as_templates(server):
    listed = server.get("/workflow_templates")
    assert sorted(listed["trajir"]) == sorted(p.stem for p in WORKFLOWS)
    for path in WORKFLOWS:  # the names have spaces and parentheses: the frontend asks for them URL-quoted
        status, body = server.get_raw(f"/api/workflow_templates/trajir/{quote(path.name)}")
        assert status == 200 and json.loads(body) == json.loads(path.read_text())
        status, body = server.get_raw(f"/api/workflow_templates/trajir/{quote(path.stem)}.jpg")
        assert status == 200 and body[:3] == b"\xff\xd8\xff"  # a JPEG thumbnail


def test_the_web_extension_and_its_descriptions_are_served(server):
    extensions = server.get("/extensions")
    assert "/extensions/trajir/trajir.js" in extensions
    status, body = server.get_raw("/extensions/trajir/template_descriptions.json")
    assert status == 200 and set(json.loads(body)) == {p.stem for p in WORKFLOWS}


def _messages(entry, kind):
    return [data for event, data in entry["status"]["messages"] if event == kind]


def test_a_latent_with_the_wrong_channel_count_is_an_execution_error(server):
    prompt = {  # EmptyLatentImage makes 4-channel latents; FLUX needs 16
        "1": {"class_type": "TrajIRTestTinyFlux", "inputs": {"seed": 0}},
        "2": {"class_type": "EmptyLatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "simple", "steps": 4,
                                                         "denoise": 1.0}},
        "4": {"class_type": "TrajIRLQInitialState", "inputs": {"model": ["1", 0], "lq_latent": ["2", 0],
                                                               "sigmas": ["3", 0], "start_mode": "step",
                                                               "start_step": 1, "start_sigma": 0.97}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["4", 1]}},
    }
    entry = server.run_prompt(prompt)
    assert entry["status"]["status_str"] == "error"
    (error,) = _messages(entry, "execution_error")
    assert error["node_type"] == "TrajIRLQInitialState" and error["exception_type"] == "ValueError"
    assert "lq_latent has 4 channels but the model expects 16" in error["exception_message"]


def test_n_below_1_from_a_linked_input_is_an_execution_error(server):
    prompt = {
        "1": {"class_type": "TrajIRTestTinyFlux", "inputs": {"seed": 0}},
        "2": {"class_type": "TrajIRTestFluxConditioning", "inputs": {"text": ""}},
        "3": {"class_type": "TrajIRTestTinyVAE", "inputs": {"seed": 0}},
        "4": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "5": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "simple", "steps": 4,
                                                         "denoise": 1.0}},
        "6": {"class_type": "BasicGuider", "inputs": {"model": ["1", 0], "conditioning": ["2", 0]}},
        "7": {"class_type": "RandomNoise", "inputs": {"noise_seed": 1}},
        "8": {"class_type": "VAEDecode", "inputs": {"samples": ["4", 0], "vae": ["3", 0]}},
        "9": {"class_type": "TrajIRRewardScorer", "inputs": {"images": ["8", 0], "metric": "uciqe", "weights": ""}},
        "10": {"class_type": "PrimitiveInt", "inputs": {"value": 0}},
        "11": {"class_type": "TrajIRBestOfN", "inputs": {
            "guider": ["6", 0], "noise": ["7", 0], "sigmas": ["5", 0], "latent_image": ["4", 0], "vae": ["3", 0],
            "reward": ["9", 2], "candidates": ["10", 0], "mode": "single_step", "branch_step": 1, "eta": 1.0,
            "eta_mode": "fixed", "batch_size": 2}},
        "12": {"class_type": "PreviewAny", "inputs": {"source": ["11", 3]}},
    }
    entry = server.run_prompt(prompt)
    assert entry["status"]["status_str"] == "error"
    (error,) = _messages(entry, "execution_error")
    assert error["node_type"] == "TrajIRBestOfN"
    assert error["exception_message"].strip() == "candidates must be an integer >= 1, got 0"


TILE_TEST_IMAGE = "trajir_tile_test.png"


def _compact_restore_prompt(tile):
    return {
        "1": {"class_type": "LoadImage", "inputs": {"image": TILE_TEST_IMAGE}},
        "2": {"class_type": "TrajIRCompactRestore", "inputs": {"image": ["1", 0], "model": "lowlight (shipped)",
                                                               "seed": 0, "tile": tile}},
        "3": {"class_type": "PreviewImage", "inputs": {"images": ["2", 0]}},
    }


def test_a_tile_below_32_is_an_execution_error_and_tile_33_finishes(server):
    """ComfyUI checks only the INT range [0, 4096] of tile (its step of 32 is the widget's); the node refuses what
    cannot work, and a 33 px tile (once a 1 px step: 9,216 tiles for the 128 px test image) takes a few."""
    from PIL import Image

    photo = Image.open(REPO / "trajir" / "data" / "samples" / "chelsea.png").convert("RGB")
    photo.resize((128, 128), Image.LANCZOS).save(server.base / "input" / TILE_TEST_IMAGE)  # LoadImage's folder
    entry = server.run_prompt(_compact_restore_prompt(16))
    assert entry["status"]["status_str"] == "error"
    (error,) = _messages(entry, "execution_error")
    assert error["node_type"] == "TrajIRCompactRestore" and error["exception_type"] == "ValueError"
    assert "tile must be 0 (the whole image at once) or at least 32 px, got 16" in error["exception_message"]
    entry = server.run_prompt(_compact_restore_prompt(33), timeout=120)
    assert entry["status"]["status_str"] == "success", _messages(entry, "execution_error")


def test_a_nan_lq_weight_from_an_api_prompt_is_an_execution_error(server):
    """JSON's NaN passes ComfyUI's FLOAT range check (every comparison with NaN is false); it once meant "auto"."""
    prompt = {
        "1": {"class_type": "TrajIRTestTinyFlux", "inputs": {"seed": 0}},
        "2": {"class_type": "EmptySD3LatentImage", "inputs": {"width": 64, "height": 64, "batch_size": 1}},
        "3": {"class_type": "BasicScheduler", "inputs": {"model": ["1", 0], "scheduler": "simple", "steps": 4,
                                                         "denoise": 1.0}},
        "4": {"class_type": "TrajIRLQInitialState", "inputs": {"model": ["1", 0], "lq_latent": ["2", 0],
                                                               "sigmas": ["3", 0], "start_mode": "step",
                                                               "start_step": 1, "start_sigma": 0.97,
                                                               "lq_weight": float("nan")}},
        "5": {"class_type": "PreviewAny", "inputs": {"source": ["4", 1]}},
    }
    entry = server.run_prompt(prompt)
    assert entry["status"]["status_str"] == "error"
    (error,) = _messages(entry, "execution_error")
    assert error["node_type"] == "TrajIRLQInitialState"
    assert "lq_weight must be a finite number" in error["exception_message"]
