"""Corpus part ``nodes``: the ComfyUI nodes called directly, with stand-ins for the few ComfyUI modules they import
when they run (``comfy.model_management``, ``comfy.utils``, ``comfy.model_sampling``, ``comfy.samplers``,
``comfy.sample``, ``folder_paths``), as tests/test_nodes_io.py does for ``folder_paths``. The stand-in model is a
rectified-flow (CONST) model with FLUX's 16-channel latent format whose clean estimate is ``0.5 tanh(x)``; the
stand-in VAE decodes a latent to a grey image of the same size. Empty batches, NaN settings, bad tiles, bad seeds
and bad model files must come back as a ``ValueError`` naming the input."""
import functools
import importlib
import math
import os
import sys
import types

import torch
import torch.nn.functional as F

from conftest import load_pack
from corpus import Case

PACK = load_pack()
NODES = PACK.NODE_CLASS_MAPPINGS
bridge = importlib.import_module("trajir_pack.nodes.comfy_bridge")
guider_module = importlib.import_module("trajir_pack.nodes.guider")
sampler_module = importlib.import_module("trajir_pack.nodes.sampler")

FLUX_SHIFT, FLUX_SCALE = 0.1159, 0.3611


class LatentFormat:
    latent_channels = 16

    def process_in(self, z):
        return (z - FLUX_SHIFT) * FLUX_SCALE

    def process_out(self, z):
        return z / FLUX_SCALE + FLUX_SHIFT


def install_comfy(ctx):
    """Put the stand-in ComfyUI modules into ``sys.modules`` for this case (undone by the monkeypatch)."""
    class ModelSampling:
        def percent_to_sigma(self, p):
            return 1.0 - p

    class CONST(ModelSampling):
        pass

    class EPS(ModelSampling):
        pass

    class ProgressBar:
        def __init__(self, total):
            self.total, self.current = total, 0

        def update(self, n):
            self.current += n

        def update_absolute(self, value, total=None):
            self.current = value

    class KSAMPLER:
        def __init__(self, sampler_function, extra_options=None):
            self.sampler_function, self.extra_options = sampler_function, dict(extra_options or {})

    class CFGGuider:
        def __init__(self, model_patcher):
            self.model_patcher = model_patcher
            self.inner_model = types.SimpleNamespace(process_latent_in=LatentFormat().process_in)

        def set_conds(self, positive, negative):
            self.conds = {"positive": positive, "negative": negative}
            self.original_conds = dict(self.conds)

        def set_cfg(self, cfg):
            self.cfg = cfg

        def sample(self, noise, latent_image, sampler, sigmas, denoise_mask=None, callback=None, disable_pbar=False,
                   seed=None):
            x = sigmas[0] * noise + (1 - sigmas[0]) * LatentFormat().process_in(latent_image)
            model = wrapped_model(self.model_patcher, self.model_patcher.denoise)
            out = sampler.sampler_function(model, x, sigmas, extra_args={"seed": seed}, **sampler.extra_options)
            return LatentFormat().process_out(out)

    comfy = types.ModuleType("comfy")
    comfy.model_management = types.SimpleNamespace(
        get_torch_device=lambda: torch.device("cpu"), intermediate_device=lambda: torch.device("cpu"),
        throw_exception_if_processing_interrupted=lambda: None)
    comfy.utils = types.SimpleNamespace(
        ProgressBar=ProgressBar,
        common_upscale=lambda x, width, height, method, crop: F.interpolate(x, size=(height, width), mode="bilinear"))
    comfy.model_sampling = types.SimpleNamespace(CONST=CONST, EPS=EPS)
    comfy.samplers = types.SimpleNamespace(KSAMPLER=KSAMPLER, CFGGuider=CFGGuider)
    comfy.sample = types.SimpleNamespace(fix_empty_latent_channels=lambda patcher, samples: samples)
    models_dir = ctx.tmp / "models"
    registry = {}
    folder_paths = types.SimpleNamespace(
        get_output_directory=lambda: str(ctx.tmp / "output"), models_dir=str(models_dir),
        folder_names_and_paths=registry,
        add_model_folder_path=lambda name, path, is_default=False: registry.setdefault(name, ([], set()))[0].append(
            path),
        get_folder_paths=lambda name: list(registry.get(name, ([], set()))[0]),
        get_filename_list=lambda name: sorted(os.listdir(models_dir / name)) if (models_dir / name).is_dir() else [],
        get_full_path=lambda name, f: str(models_dir / name / f) if (models_dir / name / f).is_file() else None)
    (ctx.tmp / "output").mkdir(exist_ok=True)
    for name, module in (("comfy", comfy), ("comfy.model_management", comfy.model_management),
                         ("comfy.utils", comfy.utils), ("comfy.model_sampling", comfy.model_sampling),
                         ("comfy.samplers", comfy.samplers), ("comfy.sample", comfy.sample),
                         ("folder_paths", folder_paths)):
        ctx.monkeypatch.setitem(sys.modules, name, module)
    # the guider class is built once from CFGGuider: build it afresh from the stand-in, and forget it afterwards
    ctx.monkeypatch.setattr(guider_module, "guider_class", functools.cache(guider_module.guider_class.__wrapped__))
    ctx.comfy = comfy
    return comfy


class Patcher:
    """A stand-in ModelPatcher: a CONST (rectified-flow) model in FLUX's latent format."""

    def __init__(self, comfy, denoise=None, sampling="CONST"):
        self.sampling = getattr(comfy.model_sampling, sampling)()
        self.denoise = denoise or (lambda x, sigma: 0.5 * torch.tanh(x))

    def get_model_object(self, name):
        return {"latent_format": LatentFormat(), "model_sampling": self.sampling}[name]


def wrapped_model(patcher, denoise):
    """What a KSAMPLER function receives: ``model(x, sigma, **extra)`` -> x0, with ``inner_model.model_patcher``."""
    def model(x, sigma, **kwargs):
        return denoise(x, sigma)
    model.inner_model = types.SimpleNamespace(model_patcher=patcher)
    return model


class FakeVAE:
    def decode(self, latent):
        grey = torch.sigmoid(latent.mean(1, keepdim=True))
        return grey.expand(-1, 3, -1, -1).permute(0, 2, 3, 1)


class FakeNoise:
    seed = 7

    def generate_noise(self, latent):
        return torch.randn(latent["samples"].shape, generator=torch.Generator().manual_seed(self.seed))


SIGMAS = torch.tensor([1.0, 0.75, 0.5, 0.25, 0.0])


def latent(batch=1, channels=16, size=8):
    return {"samples": torch.randn(batch, channels, size, size, generator=torch.Generator().manual_seed(1))}


def image(batch=1, height=48, width=40, fill=None):
    if fill is not None:
        return torch.full((batch, height, width, 3), fill)
    return torch.rand(batch, height, width, 3, generator=torch.Generator().manual_seed(2))


def node(name):
    return NODES[name]()


# --- Compact Restore -----------------------------------------------------------------------------------------------

def compact(img, model="lowlight (shipped)", seed=0, tile=256, model_file=None):
    def run(ctx):
        install_comfy(ctx)
        chosen = model
        if model_file is not None:
            folder = ctx.tmp / "models" / "trajir"
            folder.mkdir(parents=True, exist_ok=True)
            chosen = f"{model_file}.safetensors"
            (folder / chosen).write_bytes(ctx.shared.model_file(model_file).read_bytes())
        return node("TrajIRCompactRestore").restore(img() if callable(img) else img, chosen, seed, tile)
    return run


def _restored_like(batch, height, width):
    def check(result, ctx):
        (out,) = result
        assert tuple(out.shape) == (batch, height, width, 3), f"shape {tuple(out.shape)}"
        assert bool(torch.isfinite(out).all()) and 0 <= float(out.min()) and float(out.max()) <= 1
    return check


def _tile_count(tile, height, width):
    """Restore with ``tile`` and count the tiles through the progress callback."""
    def run(ctx):
        install_comfy(ctx)
        from trajir_pack.trajir import compact

        ctx.tiles = 0
        original = compact.restore

        def counting(*args, progress=None, **kwargs):
            def counted(done, total):
                ctx.tiles = total
                if progress is not None:
                    progress(done, total)
            return original(*args, progress=counted, **kwargs)

        compact_module = importlib.import_module("trajir_pack.nodes.compact_restore")
        ctx.monkeypatch.setattr(compact_module, "restore", counting)
        return node("TrajIRCompactRestore").restore(image(1, height, width), "lowlight (shipped)", 0, tile)
    return run


def _check_tile_count(tile, height, width):
    def check(result, ctx):
        _restored_like(1, height, width)(result, ctx)
        bound = 2 * math.ceil(height / tile) * math.ceil(width / tile)
        assert ctx.tiles <= bound, f"{ctx.tiles} tiles for a {height} x {width} image at tile {tile} (bound {bound})"
    return check


# --- the sampling nodes --------------------------------------------------------------------------------------------

def initial_state(lq, lq_weight=-1.0, sigmas=SIGMAS, mode="step", step=1, start_sigma=0.9):
    def run(ctx):
        comfy = install_comfy(ctx)
        return node("TrajIRLQInitialState").run(Patcher(comfy), lq, sigmas, mode, step, start_sigma, lq_weight)
    return run


def guidance(lq, w=0.05, window="percent", start=0.0, end=1.0):
    def run(ctx):
        comfy = install_comfy(ctx)
        return node("TrajIRNegativeLQGuidance").get_guider(Patcher(comfy), [], [], lq, 1.0, w, window, start, end)
    return run


def msde(x, denoise=None, eta=0.5, sampling="CONST", sigmas=SIGMAS, get_sampler_only=False):
    def run(ctx):
        comfy = install_comfy(ctx)
        sampler = node("TrajIRMSDESampler").get_sampler(eta, "constant", "percent", 0.0, 1.0, 1.0)[0]
        if get_sampler_only:
            return sampler
        model = wrapped_model(Patcher(comfy, sampling=sampling), denoise or (lambda x, s: 0.5 * torch.tanh(x)))
        return sampler.sampler_function(model, x, sigmas, extra_args={"seed": 3}, **sampler.extra_options)
    return run


def _finite_like(shape):
    def check(result, ctx):
        assert tuple(result.shape) == shape and bool(torch.isfinite(result).all()), \
            f"shape {tuple(result.shape)}, finite {bool(torch.isfinite(result).all())}"
    return check


def best_of_n(lat, reference=None, metric="uciqe", candidates=2, denoise=None, save=False, batch_size=4, **options):
    def run(ctx):
        comfy = install_comfy(ctx)
        reward = node("TrajIRRewardScorer").score(image(), metric, "", None if metric == "uciqe" else image())
        guider = comfy.samplers.CFGGuider(Patcher(comfy, denoise))
        guider.set_conds([], [])
        return node("TrajIRBestOfN").run(guider, FakeNoise(), SIGMAS, lat, FakeVAE(), reward["result"][2],
                                         candidates, "single_step", 1, 1.0, "fixed", batch_size,
                                         reference=reference, save_branch=save, filename="trajir/branches/b",
                                         **options)
    return run


def _check_best_of_n(result, ctx):
    best_latent, best_image, candidates, table = result
    assert best_latent["samples"].shape == (1, 16, 8, 8) and best_image.shape == (1, 8, 8, 3)
    assert candidates.shape == (3, 8, 8, 3) and table.count("*") == 1


def _check_saved_mode(result, ctx):
    _check_best_of_n(result, ctx)
    (path,) = (ctx.tmp / "output" / "trajir" / "branches").iterdir()
    assert path.stat().st_mode & 0o777 == 0o666 & ~ctx.umask, f"{path.name} has mode {oct(path.stat().st_mode)}"


def with_umask(run):
    def wrapped(ctx):
        ctx.umask = 0o022
        previous = os.umask(ctx.umask)
        try:
            return run(ctx)
        finally:
            os.umask(previous)
    return wrapped


# --- Sample Image, Scale (Pixel Cap) ------------------------------------------------------------------------------

def sample_image(img=None, task="lowlight", strength=0.5, seed=0, size=0, downscale=1, photo="coffee"):
    def run(ctx):
        install_comfy(ctx)
        return node("TrajIRSampleImage").run(photo, task, strength, seed, size, downscale, img)
    return run


def _check_sample_pair(result, ctx):
    lq, gt = result
    assert lq.shape == gt.shape and gt.shape[1] % 16 == 0 and gt.shape[2] % 16 == 0, f"{lq.shape}, {gt.shape}"
    assert 0 <= float(lq.min()) and float(lq.max()) <= 1 and not torch.equal(lq, gt), "the LQ is not degraded"


def scale(img, scale_by=2.0, max_megapixels=1.0):
    def run(ctx):
        install_comfy(ctx)
        return node("TrajIRScaleWithCap").scale(img, scale_by, max_megapixels, "bilinear")
    return run


def _check_capped(result, ctx):
    (out,) = result
    h, w = out.shape[1:3]
    assert h * w <= 0.001 * 1024 * 1024 and h % 16 == 0 and w % 16 == 0, f"{h} x {w} for a cap of 0.001 MP"


# --- Reward Scorer, Save Conditioning ------------------------------------------------------------------------------

def scorer(images, metric="uciqe", reference=None, weights=""):
    return lambda ctx: node("TrajIRRewardScorer").score(images, metric, weights, reference)


def _check_flat_niqe(result, ctx):
    mean, table, _ = result["result"]
    assert mean == 0.0, f"a flat image's NIQE reward is {mean}, expected 0 (the worst)"
    assert "nan" in table.lower(), f"the table does not show that NIQE is undefined: {table}"


def conditioning(tokens=3, pooled_fill=None):
    cond = torch.randn(1, tokens, 4096, generator=torch.Generator().manual_seed(0))
    pooled = torch.randn(1, 768, generator=torch.Generator().manual_seed(1))
    if pooled_fill is not None:
        pooled[0, 0] = pooled_fill
    return [[cond, {"pooled_output": pooled, "guidance": 3.5}]]


def save_conditioning(cond, name="trajir/prompts/p"):
    def run(ctx):
        install_comfy(ctx)
        return node("TrajIRSaveConditioning").save(cond, name)
    return run


def _check_conditioning_mode(result, ctx):
    path = result["result"][0]
    mode = os.stat(path).st_mode & 0o777
    assert mode == 0o666 & ~ctx.umask, f"{os.path.basename(path)} has mode {oct(mode)} under umask {oct(ctx.umask)}"


def nan_output(x, sigma):
    return torch.full_like(x, math.nan)


CASES = [
    # the bridge: IMAGE / LATENT adapters
    Case("IMAGE with batch 0", lambda ctx: bridge.image_to_bchw("images", image(0)),
         r"images is an empty batch \(0 images"),
    Case("IMAGE with height 0", lambda ctx: bridge.image_to_bchw("images", torch.zeros(1, 0, 8, 3)),
         r"images has a height or width of 0"),
    Case("LATENT with batch 0", lambda ctx: bridge.latent_samples("lq_latent", latent(0), 16),
         r"lq_latent is an empty batch \(0 latents"),
    Case("LATENT with width 0", lambda ctx: bridge.latent_samples("lq_latent", {"samples": torch.zeros(1, 16, 4, 0)},
                                                                  16), r"lq_latent has a height or width of 0"),
    # Compact Restore
    Case("Compact Restore, empty batch", compact(image(0)), r"image is an empty batch \(0 images"),
    Case("Compact Restore, zero height", compact(torch.zeros(1, 0, 32, 3)), r"image has a height or width of 0"),
    Case("Compact Restore, NaN pixels", compact(lambda: image().index_fill(1, torch.tensor([3]), math.nan)),
         r"image contains \d+ NaN"),
    Case("Compact Restore, values above 1", compact(image(fill=2.0)), r"image must hold values in 0\.\.1, got 2\.\.2"),
    Case("Compact Restore, tile 33", _tile_count(33, 128, 192), check=_check_tile_count(33, 128, 192)),
    Case("Compact Restore, tile 16", compact(image(), tile=16), r"tile must be 0 .* or at least 32.*got 16"),
    Case("Compact Restore, tile -1", compact(image(), tile=-1), r"tile must be 0 .* or at least 32.*got -1"),
    Case("Compact Restore, seed 2^64", compact(image(), seed=2**64), r"seed must be an integer in \[0, 2\^64 - 1\]"),
    Case("Compact Restore, largest seed, two images", compact(image(2), seed=2**64 - 1),
         check=_restored_like(2, 48, 40)),
    Case("Compact Restore, odd size", compact(image(1, 37, 29)), check=_restored_like(1, 37, 29)),
    Case("Compact Restore, a NaN model file", compact(image(), model_file="nan"),
         r"nan\.safetensors.* NaN or inf"),
    Case("Compact Restore, a model of another kind", compact(image(), model_file="lq_encoder"),
         r"lq_encoder\.safetensors holds a lq_encoder"),
    Case("Compact Restore, valid model with header 128 mod 256", compact(image(), model_file="header_128"),
         check=_restored_like(1, 48, 40)),
    Case("Compact Restore, unknown shipped task", compact(image(), model="sky (shipped)"),
         r"no shipped restorer for task 'sky'"),
    # LQ Initial State
    Case("LQ Initial State, lq_weight NaN", initial_state(latent(), math.nan), r"lq_weight must be a finite number"),
    Case("LQ Initial State, lq_weight inf", initial_state(latent(), math.inf),
         r"lq_weight must (be a finite number|lie in \[0, 1\]).*got inf"),
    Case("LQ Initial State, lq_weight 1.5", initial_state(latent(), 1.5), r"lq_weight must lie in \[0, 1\]"),
    Case("LQ Initial State, empty latent batch", initial_state(latent(0)), r"lq_latent is an empty batch"),
    Case("LQ Initial State, NaN in sigmas", initial_state(latent(), sigmas=torch.tensor([1.0, math.nan, 0.0])),
         r"sigmas contains NaN or inf"),
    Case("LQ Initial State, increasing sigmas", initial_state(latent(), sigmas=torch.tensor([0.0, 0.5, 1.0])),
         r"sigmas must be strictly decreasing"),
    Case("LQ Initial State, video latent with 0 frames", initial_state({"samples": torch.zeros(1, 16, 0, 8, 8)}),
         r"lq_latent has a height, width or frame count of 0"),
    Case("LQ Initial State, empty video latent batch", initial_state({"samples": torch.zeros(0, 16, 1, 8, 8)}),
         r"lq_latent is an empty batch"),
    Case("LQ Initial State, start_sigma NaN", initial_state(latent(), mode="sigma", start_sigma=math.nan),
         r"start_sigma must lie in"),
    # Negative LQ Guidance
    Case("Negative LQ Guidance, empty latent batch", guidance(latent(0)), r"lq_latent is an empty batch"),
    Case("Negative LQ Guidance, w NaN", guidance(latent(), w=math.nan), r"w must be finite and >= 0"),
    Case("Negative LQ Guidance, window backwards", guidance(latent(), start=0.8, end=0.2),
         r"a window in percent needs 0 <= start <= end <= 1"),
    # M-SDE Sampler
    Case("M-SDE Sampler, eta NaN", msde(None, eta=math.nan, get_sampler_only=True), r"eta must be finite and >= 0"),
    Case("M-SDE Sampler, model returns NaN", msde(torch.randn(1, 16, 8, 8), denoise=nan_output),
         r"the model output \(x0\) at step 0 \(sigma 1\) contains NaN values"),
    Case("M-SDE Sampler, model returns 1 channel",
         msde(torch.randn(1, 16, 8, 8), denoise=lambda x, s: x[:, :1] * 0.5),
         r"the model output \(x0\) has shape \(1, 1, 8, 8\) but x has shape \(1, 16, 8, 8\)"),
    Case("M-SDE Sampler, empty batch", msde(torch.randn(0, 16, 8, 8)), r"x is an empty batch"),
    Case("M-SDE Sampler, eta 1e200 (rectified flow)", msde(torch.randn(1, 16, 8, 8), eta=1e200),
         check=_finite_like((1, 16, 8, 8))),
    # Best-of-N
    Case("Best-of-N, empty latent batch", best_of_n(latent(0)), r"latent_image is an empty batch"),
    Case("Best-of-N, empty reference batch", best_of_n(latent(), reference=image(0, 8, 8), metric="psnr"),
         r"reference (is an empty batch|has shape \(0, 3, 8, 8\))"),
    Case("Best-of-N, model returns NaN", best_of_n(latent(), denoise=nan_output),
         r"the model output \(x0\) at sigma 1 .* NaN or inf"),
    Case("Best-of-N, branch_fraction NaN", best_of_n(latent(), branch_at="fraction", branch_fraction=math.nan),
         r"branch_fraction must lie in \[0, 1\].*got nan"),
    Case("Best-of-N, runs and saves a record", with_umask(best_of_n(latent(), save=True)), check=_check_saved_mode),
    # Sample Image, Scale (Pixel Cap)
    Case("Sample Image, empty image batch", sample_image(image(0)), r"image is an empty batch \(0 images"),
    Case("Sample Image, NaN pixels", sample_image(image().index_fill(1, torch.tensor([3]), math.nan)),
         r"image contains \d+ NaN"),
    Case("Sample Image, an 8 x 8 image", sample_image(image(1, 8, 8)), r"the image is 8x8 pixels; at least 16x16"),
    Case("Sample Image, strength NaN", sample_image(strength=math.nan),
         r"strength must be a number in 0\.\.1.*got nan"),
    Case("Sample Image, negative seed", sample_image(seed=-1), r"seed must be an integer in \[0, 2\^64 - 1\], got -1"),
    Case("Sample Image, seed above 2^64 - 1", sample_image(seed=2**64), r"seed must be an integer in \[0, 2\^64 - 1\]"),
    Case("Sample Image, a bundled photo", sample_image(), check=_check_sample_pair),
    Case("Scale (Pixel Cap), empty batch", scale(image(0)), r"image is an empty batch \(0 images"),
    Case("Scale (Pixel Cap), NaN pixels", scale(image().index_fill(1, torch.tensor([3]), math.nan)),
         r"image contains \d+ NaN"),
    Case("Scale (Pixel Cap), scale_by NaN", scale(image(), scale_by=math.nan), r"scale must be a finite number > 0"),
    Case("Scale (Pixel Cap), x16 under a 0.001 MP cap", scale(image(), 16.0, 0.001), check=_check_capped),
    # Reward Scorer
    Case("Reward Scorer, empty batch", scorer(image(0)), r"images (is|has) an empty batch"),
    Case("Reward Scorer, NaN pixels", scorer(image().index_fill(1, torch.tensor([0]), math.nan)),
         r"images contains NaN or inf"),
    Case("Reward Scorer, flat image NIQE", scorer(image(1, 128, 128, fill=0.5), "niqe"), check=_check_flat_niqe),
    Case("Reward Scorer, reference of another size", scorer(image(), "psnr", reference=image(1, 40, 48)),
         r"reference has shape"),
    # Save Conditioning
    Case("Save Conditioning, no tokens", save_conditioning(conditioning(tokens=0)),
         r"conditioning has no tokens"),
    Case("Save Conditioning, NaN in the pooled vector", save_conditioning(conditioning(pooled_fill=math.nan)),
         r"the pooled CLIP-L vector contains \d+ NaN"),
    Case("Save Conditioning, file mode follows the umask", with_umask(save_conditioning(conditioning())),
         check=_check_conditioning_mode),
    Case("Save Conditioning, path outside", save_conditioning(conditioning(), "../../x"), r"contains '\.\.'"),
]
