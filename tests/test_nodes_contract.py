"""The V1 node contract of every TrajIR node, checked without ComfyUI: names, categories, INPUT_TYPES (a tooltip on
every input, defaults inside their ranges), RETURN_TYPES / RETURN_NAMES / OUTPUT_TOOLTIPS, and a function that
accepts exactly the declared inputs."""
import inspect
import sys

import pytest
from conftest import load_pack

PACK = load_pack()
EXPECTED = {
    "TrajIRMSDESampler": ("TrajIR M-SDE Sampler", ("SAMPLER",)),
    "TrajIRLQInitialState": ("TrajIR LQ Initial State", ("LATENT", "SIGMAS")),
    "TrajIRNegativeLQGuidance": ("TrajIR Negative LQ Guidance", ("GUIDER",)),
    "TrajIRRewardScorer": ("TrajIR Reward Scorer", ("FLOAT", "STRING", "TRAJIR_REWARD")),
    "TrajIRBestOfN": ("TrajIR Best-of-N Trajectory Aligner", ("LATENT", "IMAGE", "IMAGE", "STRING")),
    "TrajIRSaveConditioning": ("TrajIR Save Conditioning", ("STRING",)),
    "TrajIRCompactRestore": ("TrajIR Compact Restore", ("IMAGE",)),
    "TrajIRSampleImage": ("TrajIR Sample Image", ("IMAGE", "IMAGE")),
    "TrajIRScaleWithCap": ("TrajIR Scale (Pixel Cap)", ("IMAGE",)),
}
SOCKETS = {"MODEL", "LATENT", "SIGMAS", "CONDITIONING", "GUIDER", "NOISE", "VAE", "IMAGE", "TRAJIR_REWARD"}


def _inputs(cls):
    declared = cls.INPUT_TYPES()
    assert set(declared) <= {"required", "optional"}
    return {**declared.get("required", {}), **declared.get("optional", {})}, declared


def test_the_pack_registers_exactly_our_nodes_without_importing_comfyui():
    assert set(PACK.NODE_CLASS_MAPPINGS) == set(EXPECTED)
    assert PACK.NODE_DISPLAY_NAME_MAPPINGS == {k: v[0] for k, v in EXPECTED.items()}
    assert not any(m == "comfy" or m.startswith("comfy.") or m == "folder_paths" for m in sys.modules)


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_node_outputs_and_metadata(name):
    cls = PACK.NODE_CLASS_MAPPINGS[name]
    assert cls.RETURN_TYPES == EXPECTED[name][1]
    assert len(cls.RETURN_NAMES) == len(cls.RETURN_TYPES) == len(cls.OUTPUT_TOOLTIPS)
    assert all(isinstance(t, str) and t for t in cls.OUTPUT_TOOLTIPS)
    assert cls.CATEGORY.startswith("TrajIR/")
    assert cls.DESCRIPTION and callable(getattr(cls, cls.FUNCTION))


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_every_input_has_a_tooltip_and_a_valid_default(name):
    cls = PACK.NODE_CLASS_MAPPINGS[name]
    inputs, _ = _inputs(cls)
    for key, spec in inputs.items():
        kind, options = spec[0], spec[1]
        assert options.get("tooltip"), f"{name}.{key} has no tooltip"
        if isinstance(kind, list):
            assert kind and options["default"] in kind, f"{name}.{key}"
        elif kind in ("INT", "FLOAT"):
            assert options["min"] <= options["default"] <= options["max"], f"{name}.{key}"
            assert isinstance(options["default"], int if kind == "INT" else float)
        elif kind in ("STRING", "BOOLEAN"):
            assert isinstance(options["default"], str if kind == "STRING" else bool)
        else:
            assert kind in SOCKETS, f"{name}.{key}: unexpected type {kind}"


@pytest.mark.parametrize("name", sorted(EXPECTED))
def test_the_node_function_takes_exactly_the_declared_inputs(name):
    cls = PACK.NODE_CLASS_MAPPINGS[name]
    inputs, declared = _inputs(cls)
    params = inspect.signature(getattr(cls, cls.FUNCTION)).parameters
    names = [p for p in params if p != "self"]
    assert names == list(inputs)
    for key in declared.get("optional", {}):
        assert params[key].default is not inspect.Parameter.empty, f"optional {key} needs a default"
    for key in declared.get("required", {}):
        assert params[key].default is inspect.Parameter.empty


def test_input_types_are_as_documented():
    get = lambda name: _inputs(PACK.NODE_CLASS_MAPPINGS[name])[1]
    assert list(get("TrajIRMSDESampler")["required"]) == ["eta", "eta_schedule", "window", "sde_start", "sde_end",
                                                         "s_noise"]
    assert {k: v[0] for k, v in get("TrajIRLQInitialState")["required"].items() if isinstance(v[0], str)} == {
        "model": "MODEL", "lq_latent": "LATENT", "sigmas": "SIGMAS", "start_step": "INT", "start_sigma": "FLOAT"}
    guider = get("TrajIRNegativeLQGuidance")
    assert [guider["required"][k][0] for k in ("model", "positive", "negative", "lq_latent", "cfg", "w")] == [
        "MODEL", "CONDITIONING", "CONDITIONING", "LATENT", "FLOAT", "FLOAT"]
    best = get("TrajIRBestOfN")
    assert best["required"]["candidates"][1]["min"] == 1
    assert best["optional"]["branch_at"][0] == ["step", "fraction"]
    assert best["optional"]["branch_fraction"][0] == "FLOAT"
    assert list(get("TrajIRSampleImage")["required"]) == ["photo", "task", "strength", "seed", "size", "downscale"]
    assert get("TrajIRSampleImage")["optional"]["image"][0] == "IMAGE"
    assert list(get("TrajIRScaleWithCap")["required"]) == ["image", "scale_by", "max_megapixels", "upscale_method"]
    assert best["required"]["reward"][0] == "TRAJIR_REWARD" and best["optional"]["reference"][0] == "IMAGE"
    scorer = get("TrajIRRewardScorer")
    assert scorer["required"]["metric"][0][:3] == ["fluxir-unified", "psnr", "custom"]
    assert {"niqe", "psnr", "lpips", "musiq", "clipiqa", "uciqe", "uiqm"} <= set(scorer["required"]["metric"][0])
    assert PACK.NODE_CLASS_MAPPINGS["TrajIRRewardScorer"].OUTPUT_NODE
    assert PACK.NODE_CLASS_MAPPINGS["TrajIRSaveConditioning"].OUTPUT_NODE
