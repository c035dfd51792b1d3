"""The shipped workflows (``workflows/*.json``): valid UI format (docs/comfyui.md §6), every node type known (ours, or
ComfyUI core as recorded from a real ComfyUI 0.3.64 in ``tests/data/comfyui-0.3.64-object_info.json``), widget
values that fit their inputs' types, options and ranges, links between matching types, the model files listed
where the loaders use them, the paper's task prompts, and a small thumbnail next to each."""
import json

import pytest
from conftest import REPO, load_pack

PACK = load_pack()
CORE = json.loads((REPO / "tests" / "data" / "comfyui-0.3.64-object_info.json").read_text())["nodes"]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
FRONTEND_ONLY = {"Note", "MarkdownNote"}  # drawn by the frontend, never sent to the server
WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_CONTROL = {"fixed", "increment", "decrement", "randomize"}
TASK_PROMPTS = {  # docs/equations.md §11
    "trajir_super_resolution": "high-resolution, ultra-sharp, detailed",
    "trajir_motion_deblur": "sharp, deblurred, clear",
    "trajir_denoise": "noise-free, clean, smooth",
    "trajir_low_light": "bright, clear, vivid",
    "trajir_derain": "remove rain streaks, dehaze, improve visibility",
    "trajir_desnow": "remove snowflakes, snow-free",
    "trajir_underwater": "clear, reduce backscatter, restore colors",
}
MODEL_DIRS = {"UNETLoader": "diffusion_models", "DualCLIPLoader": "text_encoders", "VAELoader": "vae",
              "ControlNetLoader": "controlnet"}
# inputs whose options list the files of one installation (stripped from the recorded object_info)
FILE_INPUTS = {"unet_name", "clip_name1", "clip_name2", "vae_name", "control_net_name", "image"}
MODEL_FILES = {"flux1-dev.safetensors", "ae.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors",
               "trajir_fluxir_controlnet.safetensors"}


def definition(node_type):
    """``(inputs {name: spec}, input order, required names, outputs [(name, type)])`` of a node type."""
    if node_type in PACK.NODE_CLASS_MAPPINGS:
        cls = PACK.NODE_CLASS_MAPPINGS[node_type]
        declared = cls.INPUT_TYPES()
        required, optional = declared.get("required", {}), declared.get("optional", {})
        inputs = {k: [list(v[0]) if isinstance(v[0], (list, tuple)) else v[0], *v[1:]]
                  for k, v in {**required, **optional}.items()}
        return inputs, list(required) + list(optional), set(required), list(zip(cls.RETURN_NAMES, cls.RETURN_TYPES))
    info = CORE[node_type]
    inputs = {**info["input"].get("required", {}), **info["input"].get("optional", {})}
    order = info["input_order"].get("required", []) + info["input_order"].get("optional", [])
    return inputs, order, set(info["input_order"].get("required", [])), list(zip(info["output_name"], info["output"]))


def is_widget(spec):
    return isinstance(spec[0], list) or spec[0] in WIDGETS


def check_widget(where, name, spec, value):
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    if isinstance(kind, list) or kind == "COMBO":
        choices = kind if isinstance(kind, list) else options.get("options", [])
        if name in FILE_INPUTS:
            assert value in MODEL_FILES or value.endswith(".png"), f"{where}: {value!r}"
        else:
            assert value in choices, f"{where}: {value!r} not in {choices}"
    elif kind in ("INT", "FLOAT"):
        assert isinstance(value, (int, float)) and not isinstance(value, bool), f"{where}: {value!r}"
        if kind == "INT":
            assert isinstance(value, int), f"{where}: {value!r} is not an INT"
        assert options.get("min", -float("inf")) <= value <= options.get("max", float("inf")), f"{where}: {value}"
    elif kind == "STRING":
        assert isinstance(value, str), f"{where}: {value!r}"
    else:
        assert isinstance(value, bool), f"{where}: {value!r}"


def load(path):
    return json.loads(path.read_text())


def nodes_by_type(workflow, node_type):
    return [n for n in workflow["nodes"] if n["type"] == node_type]


def test_there_is_one_workflow_per_task_and_a_best_of_n_workflow():
    assert {p.stem for p in WORKFLOWS} == set(TASK_PROMPTS) | {"trajir_best_of_n"}


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_ui_format(path):
    wf = load(path)
    assert {"id", "revision", "last_node_id", "last_link_id", "nodes", "links", "groups", "config", "extra",
            "version"} <= set(wf)
    assert wf["version"] == 0.4
    ids = [n["id"] for n in wf["nodes"]]
    assert len(ids) == len(set(ids)) and wf["last_node_id"] >= max(ids)
    assert wf["last_link_id"] >= max(link[0] for link in wf["links"])
    for node in wf["nodes"]:
        assert {"id", "type", "pos", "size", "flags", "order", "mode", "inputs", "outputs", "properties",
                "widgets_values"} <= set(node), node["id"]
        assert node["mode"] == 0 and len(node["pos"]) == 2 and len(node["size"]) == 2
    assert sorted(n["order"] for n in wf["nodes"]) == list(range(len(wf["nodes"])))


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_every_node_type_exists_and_its_widget_values_fit(path):
    for node in load(path)["nodes"]:
        where = f"{path.name} node {node['id']} ({node['type']})"
        if node["type"] in FRONTEND_ONLY:
            assert isinstance(node["widgets_values"][0], str)
            continue
        assert node["type"] in PACK.NODE_CLASS_MAPPINGS or node["type"] in CORE, f"{where}: unknown node type"
        inputs, order, _, _ = definition(node["type"])
        values = list(node["widgets_values"])
        for name in order:
            if not is_widget(inputs[name]):
                continue
            assert values, f"{where}: no value for widget {name}"
            check_widget(f"{where}.{name}", name, inputs[name], values.pop(0))
            options = inputs[name][1] if len(inputs[name]) > 1 else {}
            if options.get("control_after_generate"):
                assert values.pop(0) in SEED_CONTROL, where
            if options.get("image_upload"):
                assert values.pop(0) == "image", where
        assert values == [], f"{where}: extra widget values {values}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_sockets_and_links_match_the_node_definitions(path):
    wf = load(path)
    nodes = {n["id"]: n for n in wf["nodes"]}
    for node in wf["nodes"]:
        if node["type"] in FRONTEND_ONLY:
            continue
        inputs, _, required, outputs = definition(node["type"])
        where = f"{path.name} node {node['id']} ({node['type']})"
        assert [(o["name"], o["type"]) for o in node["outputs"]] == outputs, where
        linked = set()
        for slot in node["inputs"]:
            assert slot["type"] == inputs[slot["name"]][0], f"{where}.{slot['name']}"
            if slot["link"] is not None:
                linked.add(slot["name"])
        unlinked = {n for n in required if not is_widget(inputs[n])} - linked
        assert not unlinked, f"{where}: required inputs not connected: {unlinked}"
    for link_id, origin, origin_slot, target, target_slot, kind in wf["links"]:
        out, into = nodes[origin]["outputs"][origin_slot], nodes[target]["inputs"][target_slot]
        assert link_id in out["links"] and into["link"] == link_id, f"{path.name} link {link_id}"
        assert out["type"] == kind and into["type"] in (kind, "*"), f"{path.name} link {link_id}: {kind}"


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_loaders_list_their_model_files(path):
    wf = load(path)
    for node_type, directory in MODEL_DIRS.items():
        (node,) = nodes_by_type(wf, node_type)
        models = node["properties"]["models"]
        files = [v for v in node["widgets_values"] if isinstance(v, str) and v.endswith(".safetensors")]
        assert sorted(m["name"] for m in models) == sorted(files) and set(files) <= MODEL_FILES
        for model in models:
            assert model["directory"] == directory and model["url"].startswith("https://")
            if model["name"] != "trajir_fluxir_controlnet.safetensors":
                assert model["url"].endswith("/" + model["name"]) and "huggingface.co" in model["url"]


@pytest.mark.parametrize("path", [p for p in WORKFLOWS if p.stem in TASK_PROMPTS], ids=lambda p: p.stem)
def test_task_workflows_use_our_nodes_and_the_paper_prompt(path):
    wf = load(path)
    types = {n["type"] for n in wf["nodes"]}
    assert {"TrajIRLQInitialState", "TrajIRNegativeLQGuidance", "TrajIRMSDESampler", "TrajIRRewardScorer",
            "ControlNetLoader", "ControlNetApplyAdvanced", "UNETLoader", "SamplerCustomAdvanced", "VAEDecode",
            "SaveImage"} <= types
    assert TASK_PROMPTS[path.stem] in [n["widgets_values"][0] for n in nodes_by_type(wf, "CLIPTextEncode")]
    (scorer,) = nodes_by_type(wf, "TrajIRRewardScorer")
    from trajir_pack.trajir.rewards import get_metric

    assert not get_metric(scorer["widgets_values"][0]).full_reference  # no ground truth at restoration time
    assert not any(slot["link"] for slot in scorer["inputs"] if slot["name"] == "reference")


def test_the_best_of_n_workflow():
    wf = load(REPO / "workflows" / "trajir_best_of_n.json")
    (node,) = nodes_by_type(wf, "TrajIRBestOfN")
    assert {slot["name"] for slot in node["inputs"] if slot["link"] is not None} == {
        "guider", "noise", "sigmas", "latent_image", "vae", "reward", "reference"}
    assert all(out["links"] for out in node["outputs"][1:])  # best image, candidates and scores are shown


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_a_small_thumbnail_sits_next_to_each_workflow(path):
    from PIL import Image

    thumb = path.with_suffix(".jpg")
    assert thumb.is_file() and thumb.stat().st_size < 60_000
    with Image.open(thumb) as image:
        assert image.format == "JPEG" and min(image.size) >= 128
