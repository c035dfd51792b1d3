"""Every shipped workflow in a real ComfyUI server (``main.py --cpu``, one server per session): it converts to an API
prompt against the live ``/object_info``, runs to the end and shows its score.

The zero-download workflows run exactly as shipped (the shipped restorers, the bundled photos) and must raise PSNR
over their degraded input. The FLUX workflows run with random-weight files of the same names, formats and key
layouts as the real downloads (``tiny_model_files.py``: FLUX.1-dev bf16, Kontext scaled fp8, the FLUX VAE, the
InstantX-layout upscaler and the Union ControlNet with its mode embedder), so they prove the graph, not the
restoration quality. What the test changes, and why:

- the text encoders (T5-XXL has 4.7 B parameters at any depth) become a zero FLUX conditioning node;
- the sample photo is the square astronaut at 96 px (NIQE's smallest size) instead of a 384 px photo, and
  FluxKontextImageScale is bypassed (it resizes to 1 megapixel);
  the schedules have 3 steps instead of 21-28 and Best-of-N 2 branches instead of 4: a CPU minute, not an hour;
- the FLUX-IR ControlNet (which no one can download) is bypassed: its workflows run without it.

Skipped without $COMFYUI_PATH.
"""
import json
import re

import pytest
from comfy_harness import ui_to_api
from conftest import REPO, requires_comfyui

pytestmark = requires_comfyui
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
ZERO_DOWNLOAD = [p for p in WORKFLOWS if "(no download)" in p.stem or p.stem.startswith("Evaluate")]


def _models(path):
    """``(diffusion model, ControlNets)`` a workflow loads: workflows sharing a model run one after another, and
    ComfyUI keeps a loaded model between prompts."""
    nodes = json.loads(path.read_text())["nodes"]
    files = {kind: sorted(n["widgets_values"][0] for n in nodes if n["type"] == kind)
             for kind in ("UNETLoader", "ControlNetLoader")}
    return files["UNETLoader"], files["ControlNetLoader"]


FLUX = sorted((p for p in WORKFLOWS if p not in ZERO_DOWNLOAD), key=lambda p: (_models(p), p.stem))
FLUXIR_CONTROLNET = "trajir_fluxir_controlnet.safetensors"
TEST_STEPS, TEST_PHOTO, TEST_SIZE, TEST_BRANCHES = 3, "astronaut", 96, 2


def find(prompt, kind):
    return [key for key, node in prompt.items() if node["class_type"] == kind]


def errors(entry):
    return [data for event, data in entry["status"]["messages"] if event == "execution_error"]


def for_test(prompt):
    """The FLUX workflow ``prompt`` with the changes listed in the module docstring (nothing else changes)."""
    out, rewire = {}, {}
    fluxir_controlnets = {k for k in find(prompt, "ControlNetLoader")
                          if prompt[k]["inputs"]["control_net_name"] == FLUXIR_CONTROLNET}
    for key, node in prompt.items():
        kind, inputs = node["class_type"], dict(node["inputs"])
        if kind == "DualCLIPLoader" or key in fluxir_controlnets:
            continue
        if kind == "CLIPTextEncode":
            out[key] = {"class_type": "TrajIRTestFluxConditioning", "inputs": {"text": inputs["text"]}}
            continue
        if kind == "FluxKontextImageScale":
            rewire[(key, 0)] = inputs["image"]
            continue
        if kind == "ControlNetApplyAdvanced" and inputs["control_net"][0] in fluxir_controlnets:
            rewire[(key, 0)], rewire[(key, 1)] = inputs["positive"], inputs["negative"]
            continue
        if kind == "TrajIRSampleImage":
            inputs.update(photo=TEST_PHOTO, size=TEST_SIZE)
        if kind == "BasicScheduler":
            inputs["steps"] = TEST_STEPS
        if kind == "TrajIRBestOfN":
            inputs["candidates"] = TEST_BRANCHES
        out[key] = {"class_type": kind, "inputs": inputs}
    for node in out.values():
        for name, value in node["inputs"].items():
            while isinstance(value, list) and (value[0], value[1]) in rewire:
                value = rewire[(value[0], value[1])]
            node["inputs"][name] = value
    return out


def score_rows(table):
    """``[{column: value}]`` of a Reward Scorer table (header row, then one row per image)."""
    lines = table.splitlines()
    header = re.split(r"\s{2,}", lines[0].strip())
    return [dict(zip(header, map(float, re.split(r"\s{2,}", line.strip())))) for line in lines[1:]]


@pytest.fixture(scope="module")
def object_info(comfy_server):
    return comfy_server.get("/object_info")


@pytest.mark.parametrize("path", ZERO_DOWNLOAD, ids=lambda p: p.stem)
def test_zero_download_workflow_runs_as_shipped_and_raises_psnr(comfy_server, object_info, path):
    prompt = ui_to_api(json.loads(path.read_text()), object_info)
    assert not find(prompt, "UNETLoader") and not find(prompt, "LoadImage")  # nothing to download or copy
    entry = comfy_server.run_prompt(prompt)
    assert entry["status"]["status_str"] == "success", errors(entry)
    (scorer,) = find(prompt, "TrajIRRewardScorer")
    rows = score_rows(entry["outputs"][scorer]["text"][0])
    assert len(rows) == 2 and rows[0]["image"] == 0 and rows[1]["image"] == 1
    before, after = rows[0]["psnr (dB)"], rows[1]["psnr (dB)"]
    assert after > before + 3, f"{path.stem}: PSNR {before:.2f} dB (input) -> {after:.2f} dB (restored)"
    assert rows[1]["ssim"] > rows[0]["ssim"]
    shown = [entry["outputs"][k]["images"] for k in find(prompt, "SaveImage") + find(prompt, "PreviewImage")]
    assert shown and all(len(images) == 1 for images in shown)


@pytest.fixture(scope="module")
def models(comfy_model_files):
    return comfy_model_files


@pytest.mark.parametrize("path", FLUX, ids=lambda p: p.stem)
def test_flux_workflow_runs_with_random_weights_and_shows_a_score(comfy_server, object_info, models, path):
    workflow = json.loads(path.read_text())
    prompt = ui_to_api(workflow, object_info)
    loaders = [prompt[k]["inputs"]["unet_name"] for k in find(prompt, "UNETLoader")]
    assert loaders and set(loaders) <= set(models), loaders  # the workflow's own file names
    assert {"TrajIRLQInitialState", "TrajIRNegativeLQGuidance"} <= {n["class_type"] for n in prompt.values()}
    entry = comfy_server.run_prompt(for_test(prompt))
    assert entry["status"]["status_str"] == "success", errors(entry)
    scorers = find(prompt, "TrajIRRewardScorer")
    tables = [entry["outputs"][k]["text"][0] for k in scorers]
    assert tables and all(score_rows(t) for t in tables)
    if find(prompt, "TrajIRBestOfN"):
        (preview,) = find(prompt, "PreviewAny")
        scores = entry["outputs"][preview]["text"][0]
        assert scores.count("*") == 1 and "saved" in scores
        assert len(scores.splitlines()) == 1 + TEST_BRANCHES + 1 + 1  # header, ODE + branches, the saved line
        saved = scores.rsplit("saved ", 1)[1].strip()
        assert saved.startswith(str(comfy_server.base / "output" / "trajir" / "branches"))
    else:
        assert find(prompt, "TrajIRMSDESampler")
        (table,) = tables
        assert [row["image"] for row in score_rows(table)] == [0, 1]  # the input and the restored image
    candidates = {k for k in find(prompt, "PreviewImage")  # the previews of Best-of-N's "candidates" output
                  if prompt[prompt[k]["inputs"]["images"][0]]["class_type"] == "TrajIRBestOfN"
                  and prompt[k]["inputs"]["images"][1] == 2}
    for key in find(prompt, "SaveImage") + find(prompt, "PreviewImage"):
        images = entry["outputs"][key]["images"]
        assert len(images) == (1 + TEST_BRANCHES if key in candidates else 1), (prompt[key], images)
        assert all(image["filename"].endswith(".png") for image in images)


def test_the_test_changes_to_a_flux_workflow_are_only_the_documented_ones(object_info):
    path = next(p for p in FLUX if "Kontext" in p.stem)
    prompt = ui_to_api(json.loads(path.read_text()), object_info)
    changed = for_test(prompt)
    dropped = set(prompt) - set(changed)
    assert {prompt[k]["class_type"] for k in dropped} == {"DualCLIPLoader", "FluxKontextImageScale"}
    for key, node in changed.items():
        original = prompt[key]
        if node["class_type"] != original["class_type"]:
            assert (original["class_type"], node["class_type"]) == ("CLIPTextEncode", "TrajIRTestFluxConditioning")
            continue
        differ = {k for k in original["inputs"] if original["inputs"][k] != node["inputs"][k]}
        allowed = {"TrajIRSampleImage": {"photo", "size"}, "BasicScheduler": {"steps"}, "VAEEncode": {"pixels"},
                   "ImageStitch": {"image1"}, "ImageBatch": {"image1"}}
        assert differ <= allowed.get(node["class_type"], set()), (node["class_type"], differ)
