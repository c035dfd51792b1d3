"""trajir.colour: gamma read off a power law, colour taken from the LQ image; the recipe, restore and config wiring."""
import json

import pytest
import torch
import torch.nn.functional as F

from trajir.colour import match_lq_colour, power_law_gamma
from trajir.compact import Recipe, finish_colour, restore
from trajir.grids import RFGrid
from trajir.models.compact_unet import CompactUNet, CompactUNetConfig


def blocky_scene(seed, size=32, block=4):
    """A colourful random scene, constant on ``block`` x ``block`` squares (so block means are exact)."""
    g = torch.Generator().manual_seed(seed)
    low = 0.05 + 0.9 * torch.rand(2, 3, size // block, size // block, generator=g)
    return F.interpolate(low, scale_factor=block, mode="nearest")


@pytest.mark.parametrize("gamma", [1.2, 1.7, 2.2])
@pytest.mark.parametrize("gain", [0.05, 0.3])
def test_gamma_of_a_noiseless_power_law_is_recovered(gamma, gain):
    scene = blocky_scene(0)
    lq = gain * scene ** gamma
    assert torch.allclose(power_law_gamma(lq, scene), torch.full((2,), gamma), atol=1e-4)


def test_gamma_is_clamped_and_a_flat_image_gets_the_lower_bound():
    scene = blocky_scene(1)
    assert torch.allclose(power_law_gamma(0.5 * scene ** 7.0, scene), torch.full((2,), 5.0))
    flat = torch.full((1, 3, 16, 16), 0.4)
    assert float(power_law_gamma(0.1 * flat, flat)) == 1.0
    tiny = blocky_scene(2)[..., :3, :3]   # smaller than a block: one-pixel blocks
    assert torch.allclose(power_law_gamma(0.2 * tiny ** 1.5, tiny), torch.full((2,), 1.5), atol=1e-4)


def test_colour_comes_from_the_lq_and_brightness_stays():
    scene = 0.8 * blocky_scene(3)
    gamma = 1.7
    lq = 0.2 * scene ** gamma
    cast = scene * torch.tensor([1.2, 1.0, 0.7]).reshape(1, 3, 1, 1)   # a restorer that got the colour wrong
    for fixed in (match_lq_colour(cast, lq, gamma), match_lq_colour(cast, lq, power_law_gamma(lq, scene))):
        means, truth = fixed.mean((-1, -2)), scene.mean((-1, -2))
        # lq ** (1/gamma) is proportional to the scene, so the channel proportions are the scene's
        assert torch.allclose(means / means.sum(1, keepdim=True), truth / truth.sum(1, keepdim=True), atol=1e-4)
        assert torch.allclose(means.sum(1), cast.mean((-1, -2)).sum(1), atol=1e-4)   # brightness kept
        # one gain per channel: the structure inside a channel is untouched
        ratio = fixed / cast
        assert torch.allclose(ratio, ratio.mean((-1, -2), keepdim=True), atol=1e-4)


def test_the_fitted_gamma_sees_a_global_brightness_error_as_gain_only():
    scene = 0.8 * blocky_scene(5)
    lq = 0.2 * scene ** 1.7
    fixed = match_lq_colour(1.1 * scene, lq)   # too bright but the right colour: proportions kept
    assert torch.allclose(fixed, 1.1 * scene, atol=1e-5)


def test_a_grey_input_gives_a_grey_output():
    grey = blocky_scene(4)[:, :1].expand(-1, 3, -1, -1)
    tinted = (grey * torch.tensor([1.0, 0.9, 1.1]).reshape(1, 3, 1, 1)).clamp(0, 1)
    means = match_lq_colour(tinted, 0.1 * grey ** 2.0).mean((-1, -2))
    assert torch.allclose(means, means[:, :1].expand(-1, 3), atol=1e-5)


def test_bad_input_is_refused_with_the_name():
    x = torch.rand(1, 3, 8, 8)
    with pytest.raises(ValueError, match="restored and lq must have the same shape"):
        match_lq_colour(x, torch.rand(1, 3, 8, 9))
    with pytest.raises(ValueError, match="restored must have 3 channels"):
        match_lq_colour(torch.rand(1, 1, 8, 8), x)
    with pytest.raises(ValueError, match="gamma must be > 0"):
        match_lq_colour(x, x, gamma=0.0)
    with pytest.raises(ValueError, match="colour step must be one of"):
        finish_colour(x, x, "grey_world")


def test_recipe_colour_round_trips_and_older_recipes_load_without_it():
    grid = RFGrid.uniform(2).describe()
    recipe = Recipe(grid=grid, colour="lq_power_law")
    assert Recipe.from_json(recipe.to_json()).colour == "lq_power_law"
    older = json.loads(Recipe(grid=grid).to_json())
    del older["colour"]
    assert Recipe.from_json(json.dumps(older)).colour == ""
    with pytest.raises(ValueError, match="recipe colour must be one of"):
        Recipe(grid=grid, colour="auto")


def test_restore_applies_the_step_once_on_the_whole_image_after_tiling():
    net = CompactUNet(CompactUNetConfig.tiny(), seed=0).eval()
    lq = 0.2 * torch.rand(1, 3, 40, 72) ** 1.5
    recipe = Recipe(grid=RFGrid.uniform(2).describe(), colour="lq_power_law")
    for tile in (0, 32):
        plain = restore(net, recipe, lq, seed=3, tile=tile, colour="")
        stepped = restore(net, recipe, lq, seed=3, tile=tile)
        assert torch.allclose(stepped, match_lq_colour(plain, lq), atol=1e-6)
        assert not torch.allclose(stepped, plain, atol=1e-3)
    with pytest.raises(ValueError, match="colour must be one of"):
        restore(net, recipe, lq, colour="auto")


def test_config_refuses_an_unknown_colour_step():
    from trajir.train.config import load_config

    with pytest.raises(ValueError, match="sampling.colour must be one of"):
        load_config(None, ["sampling.colour=warm"])
    with pytest.raises(ValueError, match="reproduce.ship_colour must be one of"):
        load_config(None, ["reproduce.ship_colour=warm"])
    assert load_config(None, ["sampling.colour=lq_power_law"])["sampling.colour"] == "lq_power_law"
