"""The shipped workflows (``workflows/*.json``), checked without ComfyUI: the catalogue builds exactly the shipped
files, valid UI format (docs/comfyui.md §6), every node type known (ours, or ComfyUI core as recorded from a real
ComfyUI 0.3.64 in ``tests/data/comfyui-0.3.64-object_info.json``), widget values that fit their inputs, links
between matching types, every model file listed with a download the frontend's Missing Models dialog accepts (and
the same URL as ComfyUI's own templates where they share a file), the FLUX-IR ControlNet listed nowhere, the
defaults of the model cards, the Union mode mapping, the pixel cap, the template titles and descriptions, and a
small thumbnail next to each. That they run is ``test_workflows_comfyui.py``."""
import json
import math
import re
import sys

import pytest
from conftest import REPO, comfyui_path, load_pack

PACK = load_pack()
CORE = json.loads((REPO / "tests" / "data" / "comfyui-0.3.64-object_info.json").read_text())["nodes"]
WORKFLOWS = sorted((REPO / "workflows").glob("*.json"))
FRONTEND_ONLY = {"Note", "MarkdownNote"}  # drawn by the frontend, never sent to the server
WIDGETS = {"INT", "FLOAT", "STRING", "BOOLEAN", "COMBO"}
SEED_CONTROL = {"fixed", "increment", "decrement", "randomize"}
LOADER_FOLDERS = {"UNETLoader": "diffusion_models", "DualCLIPLoader": "text_encoders", "CLIPLoader": "text_encoders",
                  "VAELoader": "vae", "ControlNetLoader": "controlnet"}
# the Missing Models dialog of comfyui-frontend-package 1.27.10 (MissingModelsWarning): allowed sources, suffixes
ALLOWED_SOURCES = ("https://civitai.com/", "https://huggingface.co/")
ALLOWED_SUFFIXES = (".safetensors", ".sft")
FILE_INPUTS = {"unet_name", "clip_name", "clip_name1", "clip_name2", "vae_name", "control_net_name"}
FLUXIR_CONTROLNET = "trajir_fluxir_controlnet.safetensors"
FLUX_UNION_MODES = {"canny": 0, "tile": 1, "depth": 2, "blur": 3, "pose": 4, "gray": 5, "low quality": 6}  # cards
PAPER_PROMPTS = {  # docs/equations.md §11
    "super-resolution": "high-resolution, ultra-sharp, detailed", "motion deblur": "sharp, deblurred, clear",
    "denoise": "noise-free, clean, smooth", "low light": "bright, clear, vivid",
    "derain": "remove rain streaks, dehaze, improve visibility", "desnow": "remove snowflakes, snow-free",
    "underwater": "clear, reduce backscatter, restore colors",
}
KONTEXT_TASKS = {"Derain", "Raindrops", "Desnow", "Low light", "Underwater", "Dehaze"}
UNION_TASKS = {"Motion deblur": "blur", "JPEG artifacts": "low quality", "Denoise": "low quality"}

sys.path.insert(0, str(REPO / "workflows"))
import build_workflows  # noqa: E402


def by_stem(stem):
    return REPO / "workflows" / f"{stem}.json"


ZERO_DOWNLOAD = [p for p in WORKFLOWS if "(no download)" in p.stem or p.stem.startswith("Evaluate")]
FLUXIR = [p for p in WORKFLOWS if p.stem.startswith("FLUX-IR (needs training)")]
PUBLIC = [p for p in WORKFLOWS if p not in ZERO_DOWNLOAD and p not in FLUXIR]
KONTEXT = [by_stem(f"{task} - FLUX.1 Kontext dev") for task in sorted(KONTEXT_TASKS)]
UNION = [by_stem(f"{task} - FLUX.1-dev Union ControlNet") for task in sorted(UNION_TASKS)]
UPSCALER = [by_stem("Super-resolution x4 - FLUX.1-dev upscaler"), by_stem("Best-of-N super-resolution - FLUX.1-dev")]


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


def has_seed_control(name, spec):
    """The frontend adds a control_after_generate widget after INTs asking for one, and INTs named seed /
    noise_seed (its legacy convention, ``useIntWidget`` in frontend 1.27)."""
    options = spec[1] if len(spec) > 1 else {}
    return spec[0] == "INT" and (bool(options.get("control_after_generate")) or name in ("seed", "noise_seed"))


def check_widget(where, name, spec, value):
    kind, options = spec[0], (spec[1] if len(spec) > 1 else {})
    if isinstance(kind, list) or kind == "COMBO":
        choices = kind if isinstance(kind, list) else options.get("options", [])
        if name in FILE_INPUTS:  # file lists of one installation are stripped from the recorded object_info
            assert isinstance(value, str) and value.endswith(".safetensors"), f"{where}: {value!r}"
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


def widgets(node):
    """``{input name: value}`` of a node's widgets (the control_after_generate values dropped)."""
    inputs, order, _, _ = definition(node["type"])
    values, out = list(node["widgets_values"]), {}
    for name in order:
        if is_widget(inputs[name]):
            out[name] = values.pop(0)
            if has_seed_control(name, inputs[name]):
                values.pop(0)
    return out


def note(workflow):
    (text,) = [n["widgets_values"][0] for n in nodes_by_type(workflow, "MarkdownNote")]
    return text


def upstream(workflow, node_id):
    """The ids of every node that feeds ``node_id`` (directly or not)."""
    sources = {}
    for _, origin, _, target, _, _ in workflow["links"]:
        sources.setdefault(target, set()).add(origin)
    seen, todo = set(), [node_id]
    while todo:
        for origin in sources.get(todo.pop(), ()):
            if origin not in seen:
                seen.add(origin)
                todo.append(origin)
    return seen


def test_the_catalogue_builds_exactly_the_shipped_files():
    built = build_workflows.build_all()
    assert {p.name for p in built if p.suffix == ".json" and p.parent.name == "workflows"} == {
        p.name for p in WORKFLOWS}
    for path, text in built.items():
        assert path.read_text() == text, f"{path.name} is out of date: run python workflows/build_workflows.py"


def test_one_workflow_per_task_family():
    assert len(ZERO_DOWNLOAD) == 3 and len(FLUXIR) == 8
    assert all(p.is_file() for p in KONTEXT + UNION + UPSCALER)
    assert set(PUBLIC) == set(KONTEXT + UNION + UPSCALER)


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
    order = {n["id"]: n["order"] for n in wf["nodes"]}
    assert all(order[origin] < order[target] for _, origin, _, target, _, _ in wf["links"])


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
            if has_seed_control(name, inputs[name]):
                assert values.pop(0) == "fixed", where  # a shipped workflow gives the same result every run
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
def test_every_loader_lists_a_downloadable_file_except_the_fluxir_controlnet(path):
    wf = load(path)
    for node in wf["nodes"]:
        if node["type"] not in LOADER_FOLDERS:
            continue
        files = [v for k, v in widgets(node).items() if k in FILE_INPUTS]
        models = node["properties"].get("models", [])
        if files == [FLUXIR_CONTROLNET]:
            assert models == [], f"{path.name}: the FLUX-IR ControlNet has no download; list none"
            continue
        assert sorted(m["name"] for m in models) == sorted(files), f"{path.name} {node['type']}"
        for model in models:
            assert model["directory"] == LOADER_FOLDERS[node["type"]]
            assert model["url"].startswith(ALLOWED_SOURCES) and model["name"].endswith(ALLOWED_SUFFIXES)
            assert "/resolve/" in model["url"] and model["url"].endswith(".safetensors"), model["url"]
            if model["url"].rsplit("/", 1)[1] != model["name"]:  # the note tells the user what to rename
                assert model["url"].endswith("/diffusion_pytorch_model.safetensors")
                assert "rename" in note(wf) and model["name"] in note(wf)


def test_urls_are_those_of_comfyuis_own_templates_for_the_files_they_share():
    templates = pytest.importorskip("comfyui_workflow_templates",
                                    reason="installed with ComfyUI's requirements (.ci/comfyui-requirements)")
    import importlib.resources

    official = {}
    for path in (importlib.resources.files(templates) / "templates").iterdir():
        if not path.name.endswith(".json") or path.name == "index.json":
            continue
        data = json.loads(path.read_text())
        if not isinstance(data, dict):
            continue
        nodes = list(data.get("nodes", []))
        for sub in (data.get("definitions") or {}).get("subgraphs", []):
            nodes += sub.get("nodes", [])
        for node in nodes:
            for model in (node.get("properties") or {}).get("models") or []:
                official.setdefault(model["name"], set()).add((model["url"].split("?")[0], model["directory"]))
    ours = {}
    for path in WORKFLOWS:
        for node in load(path)["nodes"]:
            for model in node["properties"].get("models", []):
                ours.setdefault(model["name"], set()).add((model["url"], model["directory"]))
    shared = {name for name in ours if name in official}
    assert {"flux1-dev.safetensors", "ae.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors",
            "flux1-dev-kontext_fp8_scaled.safetensors", "t5xxl_fp8_e4m3fn_scaled.safetensors"} <= shared
    for name in shared:
        assert len(ours[name]) == 1 and ours[name] <= official[name], (name, ours[name], official[name])


@pytest.mark.parametrize("path", PUBLIC + FLUXIR, ids=lambda p: p.stem)
def test_flux_workflows_sample_with_our_nodes_and_end_in_a_visible_score(path):
    wf = load(path)
    types = {n["type"] for n in wf["nodes"]}
    assert {"TrajIRLQInitialState", "TrajIRNegativeLQGuidance", "TrajIRSampleImage"} <= types
    assert {"TrajIRMSDESampler", "SamplerCustomAdvanced", "VAEDecode"} <= types or "TrajIRBestOfN" in types
    assert "LoadImage" not in types  # the bundled photo validates with nothing copied into input/
    scorers = nodes_by_type(wf, "TrajIRRewardScorer")
    assert scorers and "SaveImage" in types
    if "TrajIRBestOfN" in types:
        (best,) = nodes_by_type(wf, "TrajIRBestOfN")
        (preview,) = nodes_by_type(wf, "PreviewAny")
        assert best["id"] in upstream(wf, preview["id"])  # the candidates' rewards on screen
    else:
        (decode,) = nodes_by_type(wf, "VAEDecode")
        (scorer,) = scorers
        assert decode["id"] in upstream(wf, scorer["id"])  # the restored image is scored


@pytest.mark.parametrize("path", PUBLIC, ids=lambda p: p.stem)
def test_public_flux_workflows_state_files_licence_memory_and_what_was_not_measured(path):
    text = note(load(path))
    assert "Non-Commercial License" in text and "GPU memory" in text
    assert "not measured" in text and "random weights" in text
    for node in load(path)["nodes"]:
        for model in node["properties"].get("models", []):
            assert f"models/{model['directory']}/{model['name']}" in text


@pytest.mark.parametrize("path", PUBLIC, ids=lambda p: p.stem)
def test_public_flux_workflows_use_the_model_card_defaults(path):
    wf = load(path)
    (scheduler,) = nodes_by_type(wf, "BasicScheduler")
    assert widgets(scheduler)["steps"] == 28
    (guidance,) = nodes_by_type(wf, "FluxGuidance")
    kontext = path in KONTEXT
    assert widgets(guidance)["guidance"] == (2.5 if kontext else 3.5)
    if not kontext:
        (applied,) = nodes_by_type(wf, "ControlNetApplyAdvanced")
        assert widgets(applied)["strength"] == 0.6  # jasperai's card; inside the Union-Pro card's 0.3-0.8
        (vae,) = nodes_by_type(wf, "VAELoader")
        assert any(link == applied["inputs"][4]["link"] for link in vae["outputs"][0]["links"])  # VAE connected
    if path in UPSCALER:
        (text,) = nodes_by_type(wf, "CLIPTextEncode")
        assert widgets(text)["text"] == ""  # jasperai's card: an empty prompt


@pytest.mark.parametrize("path", UPSCALER, ids=lambda p: p.stem)
def test_super_resolution_caps_the_output_pixels_and_says_so(path):
    wf = load(path)
    (cap,) = nodes_by_type(wf, "TrajIRScaleWithCap")
    values = widgets(cap)
    assert values["scale_by"] == 4.0 and values["max_megapixels"] == 1.0
    for consumer in ("ControlNetApplyAdvanced", "VAEEncode"):
        (node,) = nodes_by_type(wf, consumer)
        assert cap["id"] in upstream(wf, node["id"])
    from trajir_pack.trajir.data.transforms import capped_size

    h, w = capped_size(3000, 4000, 4.0, 1.0)
    assert h * w <= 1024 * 1024 and (h, w) == (880, 1168)
    text = note(wf)
    assert "1 megapixel" in text or "1 MP" in text
    if "Best-of-N" not in path.stem:
        assert "880 x 1168" in text and "192-megapixel" in text and math.isclose(3000 * 4000 * 16 / 1e6, 192)


@pytest.mark.parametrize("path", UNION, ids=lambda p: p.stem)
def test_union_workflows_select_the_flux_mode_their_note_names(path):
    wf = load(path)
    task = path.stem.split(" - ")[0]
    mode = UNION_TASKS[task]
    (setter,) = nodes_by_type(wf, "SetUnionControlNetType")
    option = widgets(setter)["type"]
    options = CORE["SetUnionControlNetType"]["input"]["required"]["type"][0]
    assert options[0] == "auto" and options.index(option) - 1 == FLUX_UNION_MODES[mode]  # the index ComfyUI sends
    text = note(wf)
    for flux_mode, sdxl_option in (("tile", "depth"), ("blur", "canny/lineart/anime_lineart/mlsd"),
                                   ("low quality", "tile")):
        assert options.index(sdxl_option) - 1 == FLUX_UNION_MODES[flux_mode]
        assert f"**{flux_mode} = option `{sdxl_option}`**" in text
    assert f"**{mode}** mode" in text and "4823" in text and "2.0 has no tile" in text


def test_the_union_mapping_against_comfyuis_own_table():
    if comfyui_path() is None:
        pytest.skip("set COMFYUI_PATH to read comfy/cldm/control_types.py (the recorded object_info is checked "
                    "above)")
    source = (comfyui_path() / "comfy" / "cldm" / "control_types.py").read_text()
    table = {name: int(index) for name, index in re.findall(r'"([^"]+)":\s*(\d+)', source)}
    assert {mode: table[option] for mode, option in build_workflows.UNION_OPTION_FOR_MODE.items()} == {
        mode: FLUX_UNION_MODES[mode] for mode in build_workflows.UNION_OPTION_FOR_MODE}


def test_kontext_workflows_have_one_instruction_per_task():
    instructions = set()
    for path in KONTEXT:
        wf = load(path)
        types = {n["type"] for n in wf["nodes"]}
        assert {"ReferenceLatent", "FluxKontextImageScale", "ConditioningZeroOut"} <= types
        (text,) = nodes_by_type(wf, "CLIPTextEncode")
        instruction = widgets(text)["text"]
        assert instruction.startswith(("Remove", "Brighten")) and instruction in note(wf)
        instructions.add(instruction)
        (reference,) = nodes_by_type(wf, "ReferenceLatent")
        assert text["id"] in upstream(wf, reference["id"])
    assert len(instructions) == len(KONTEXT) == 6


@pytest.mark.parametrize("path", FLUXIR, ids=lambda p: p.stem)
def test_fluxir_workflows_say_they_need_a_trained_controlnet(path):
    wf = load(path)
    (loader,) = nodes_by_type(wf, "ControlNetLoader")
    assert widgets(loader)["control_net_name"] == FLUXIR_CONTROLNET and "models" not in loader["properties"]
    text = note(wf)
    assert "Needs a trained FLUX-IR ControlNet" in text and "python -m trajir.train fluxir_controlnet" in text
    assert "github.com" not in json.dumps(wf)
    key = path.stem.split(" - ", 1)[1]
    if key in PAPER_PROMPTS:
        prompts = [widgets(n)["text"] for n in nodes_by_type(wf, "CLIPTextEncode")]
        assert PAPER_PROMPTS[key] in prompts


@pytest.mark.parametrize("path", ZERO_DOWNLOAD, ids=lambda p: p.stem)
def test_zero_download_workflows_need_only_the_pack(path):
    wf = load(path)
    types = {n["type"] for n in wf["nodes"]}
    assert not types & set(LOADER_FOLDERS) and "LoadImage" not in types
    assert {"TrajIRSampleImage", "TrajIRCompactRestore", "TrajIRRewardScorer", "ImageStitch"} <= types
    (restore,) = nodes_by_type(wf, "TrajIRCompactRestore")
    (sample,) = nodes_by_type(wf, "TrajIRSampleImage")
    assert widgets(restore)["model"] == widgets(sample)["task"] + " (shipped)"
    assert widgets(sample)["photo"] in ("chelsea", "coffee")  # held out of the restorers' training
    (scorer,) = nodes_by_type(wf, "TrajIRRewardScorer")
    metrics = widgets(scorer)
    assert metrics["metric"] == "custom" and "psnr=1" in metrics["weights"] and "ssim=1" in metrics["weights"]
    assert any(slot["name"] == "reference" and slot["link"] for slot in scorer["inputs"])


def test_the_evaluation_workflow_scores_psnr_ssim_and_niqe():
    (scorer,) = nodes_by_type(load(by_stem("Evaluate a restorer - PSNR, SSIM, NIQE")), "TrajIRRewardScorer")
    assert widgets(scorer)["weights"] == "psnr=1, ssim=1, niqe=1"


@pytest.mark.parametrize("path", [p for p in WORKFLOWS if "Best-of-N" in p.stem], ids=lambda p: p.stem)
def test_best_of_n_workflows_branch_at_a_fraction_and_save_the_branch(path):
    wf = load(path)
    (node,) = nodes_by_type(wf, "TrajIRBestOfN")
    values = widgets(node)
    assert values["branch_at"] == "fraction" and values["branch_fraction"] == 0.25 and values["save_branch"]
    assert all(out["links"] for out in node["outputs"][1:])  # best image, candidates and scores are shown
    (scorer,) = nodes_by_type(wf, "TrajIRRewardScorer")
    from trajir_pack.trajir.rewards import get_metric

    full_reference = get_metric(widgets(scorer)["metric"]).full_reference
    assert full_reference == (path in FLUXIR)  # the public one needs no ground truth


def test_template_titles_and_descriptions():
    descriptions = json.loads((REPO / "web" / "template_descriptions.json").read_text())
    assert list(descriptions) == [p[0] for p in build_workflows.CATALOGUE]
    assert set(descriptions) == {p.stem for p in WORKFLOWS}
    for title, text in descriptions.items():
        assert len(title) <= 50 and re.fullmatch(r"[A-Za-z0-9 .,()+-]+", title), title  # two card lines, URL-safe
        assert 20 <= len(text) <= 60 and "\n" not in text and text != title, title  # two lines of a card
    readme = (REPO / "README.md").read_text()
    for title in descriptions:
        assert title in readme, f"the README does not list {title!r}"
    assert "Templates → Custom Nodes → trajir" in readme


@pytest.mark.parametrize("path", WORKFLOWS, ids=lambda p: p.stem)
def test_a_small_thumbnail_sits_next_to_each_workflow(path):
    from PIL import Image

    thumb = path.with_suffix(".jpg")
    assert thumb.is_file() and thumb.stat().st_size < 60_000
    with Image.open(thumb) as image:
        assert image.format == "JPEG" and min(image.size) >= 128
