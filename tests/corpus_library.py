"""Corpus part ``library``: the ``trajir`` API with integer, half-precision, empty, NaN and extreme inputs, model
files that look like something else (or are refused for looking like something else), tile sizes and seeds, and
the permissions of written files. Results are checked against closed forms or an independent float32 / float64
computation."""
import math
import os
import struct

import torch

from corpus import Case
from trajir import guidance, interpolation, sde
from trajir.compact import load_compact, restore
from trajir.data import read_image, write_png
from trajir.distillation import implied_velocity
from trajir.models import load, save
from trajir.rewards import Reward, score
from trajir.rewards.niqe import niqe
from trajir.safefiles import write_tagged
from trajir.samplers import sample_msde

G = torch.Generator().manual_seed(0)
X = torch.randn(2, 3, 8, 8, generator=G)
V = torch.randn(2, 3, 8, 8, generator=G)
Z = torch.randn(2, 3, 8, 8, generator=G)
LQ = torch.rand(2, 3, 8, 8, generator=G)
SIGMAS = torch.tensor([1.0, 0.8, 0.6, 0.3, 0.0])


def close(want, atol=1e-5, rtol=1e-5):
    def check(result, ctx):
        assert torch.is_tensor(result) and bool(torch.isfinite(result).all()), f"not finite: {result}"
        assert result.shape == want().shape, f"shape {tuple(result.shape)} != {tuple(want().shape)}"
        diff = float((result.double() - want().double()).abs().max())
        assert torch.allclose(result.double(), want().double(), atol=atol, rtol=rtol), f"max difference {diff:.3g}"
    return check


# --- M-SDE steps: large eta ----------------------------------------------------------------------------------------

def rf_limit(x, v, t_next, z):
    """The rectified-flow step as eta -> infinity with t' >= 1/2: s -> -inf, scale (1 - t')/(1 - s) -> 0, the
    drift term -> -(1 - t') v and the noise term -> sqrt(2 t' - 1) z (from Eq. (13)-(14))."""
    return -(1 - t_next) * v.double() - math.sqrt(2 * t_next - 1) * z.double()


def rf_at_eta_max(x, v, t, t_next, z):
    """Below t' = 1/2 a huge eta falls back to eta_max^2 = 2 t'(1 - t') / ((1 - 2 t') dt): the pure overshoot."""
    dt = t - t_next
    eta2 = 2 * t_next * (1 - t_next) / ((1 - 2 * t_next) * dt)
    s = t_next - eta2 * dt
    return (1 - t_next) / (1 - s) * (x.double() + (s - t) * v.double())


def holds(predicate, what):
    def check(result, ctx):
        assert predicate(result), f"{what}, got {result}"
    return check


def point_mass_model(c):
    return lambda x, sigma: torch.full_like(x, c)


# --- the sampler ---------------------------------------------------------------------------------------------------

def sampler_with(model, x=None, eta=0.5, param="rf", sigmas=SIGMAS):
    return lambda ctx: sample_msde(model, X if x is None else x, sigmas, eta=eta, param=param, seed=1, disable=True)


def guided_half_model(lq):
    """A model in float16 whose clean estimate goes through negative LQ guidance (as the ComfyUI guider does)."""
    def model(x, sigma):
        assert x.dtype == torch.float16
        return guidance.ngs_x0((0.9 * x).half(), lq.half(), 0.05)
    return model


def _half_reference(ctx):
    x = X.half()
    sigmas = torch.tensor([1.0, 0.5, 1e-5, 0.0])
    model = guided_half_model(LQ)
    ctx.reference = sample_msde(lambda x, s: model(x.half(), s).float(), x.float(), sigmas, eta=0.0, disable=True)
    return sample_msde(model, x, sigmas, eta=0.0, disable=True)


def _check_half(result, ctx):
    assert result.dtype == torch.float16, f"dtype {result.dtype}"
    assert bool(torch.isfinite(result).all()), "the float16 result is not finite"
    diff = float((result.float() - ctx.reference).abs().max())
    assert diff < 2e-2, f"differs from the float32 computation by {diff:.3g}"


# --- model files ---------------------------------------------------------------------------------------------------

def load_variant(variant):
    return lambda ctx: load(ctx.shared.model_file(variant))


def _same_as_shipped(result, ctx):
    shipped = load(ctx.shared.model).state_dict()
    got = result.state_dict()
    assert got.keys() == shipped.keys() and all(torch.equal(got[k], shipped[k]) for k in got)


def _check_compact_pair(result, ctx):
    net, recipe = result
    _same_as_shipped(net, ctx)
    assert recipe.nfe == 2


def raw_file(name, data):
    def run(ctx):
        path = ctx.tmp / name
        path.write_bytes(data)
        return load(path)
    return run


def _header(n, body=b""):
    return struct.pack("<Q", n) + body


# --- restoration ---------------------------------------------------------------------------------------------------

def restore_with(tile=256, overlap=None, seed=0, lq=None, size=(40, 48)):
    def run(ctx):
        net, recipe = load_compact(ctx.shared.model)
        ctx.tiles = 0

        def progress(done, total):
            ctx.tiles = total
        image = torch.rand(1, 3, *size, generator=torch.Generator().manual_seed(3)) if lq is None else lq
        extra = {} if overlap is None else {"overlap": overlap}  # the default otherwise, whatever it is
        return restore(net, recipe, image, seed=seed, tile=tile, progress=progress, **extra)
    return run


def _check_tiles(tile, size):
    def check(result, ctx):
        assert tuple(result.shape) == (1, 3, *size) and bool(torch.isfinite(result).all())
        bound = 2 * math.ceil(size[0] / tile) * math.ceil(size[1] / tile)
        assert ctx.tiles <= bound, f"{ctx.tiles} tiles at tile {tile} for {size} (bound {bound})"
    return check


# --- files ---------------------------------------------------------------------------------------------------------

def written_mode(kind, umask):
    def run(ctx):
        previous = os.umask(umask)
        try:
            if kind == "png":
                path = write_png(ctx.tmp / "a.png", torch.rand(3, 4, 4))
            elif kind == "tagged":
                path = write_tagged(ctx.tmp / "a.safetensors", {"x": torch.zeros(2)}, "test")
            elif kind == "checkpoint":
                from trajir.train.checkpoint import save_checkpoint
                path = os.path.join(save_checkpoint(ctx.tmp / "ckpt", 1, {"w": torch.zeros(2)}), "tensors.safetensors")
            else:
                path = save(load(ctx.shared.model), ctx.tmp / "m.safetensors")
        finally:
            os.umask(previous)
        return os.stat(path).st_mode & 0o777
    return run


def mode_is(expected):
    def check(result, ctx):
        assert result == expected, f"mode {oct(result)}, expected {oct(expected)}"
    return check


def _read_folder(ctx):
    (ctx.tmp / "pics").mkdir()
    return read_image(ctx.tmp / "pics")


FLAT = torch.full((1, 3, 128, 128), 0.5)
HALF_FLAT = torch.cat([FLAT[..., :64], torch.rand(1, 3, 128, 64, generator=torch.Generator().manual_seed(5))], -1)
HALF_FLAT = torch.cat([HALF_FLAT, torch.rand(1, 3, 128, 128, generator=torch.Generator().manual_seed(6))], -1)

I64 = torch.ones(2, 3, 8, 8, dtype=torch.int64)

CASES = [
    # integer tensors are refused, not truncated
    Case("rf_msde_step with an integer x", lambda ctx: sde.rf_msde_step(I64, V, 0.9, 0.5, 0.0, None),
         r"x must be a floating-point tensor, got torch.int64"),
    Case("rf_msde_step with an integer v", lambda ctx: sde.rf_msde_step(X, I64 * 3, 0.9, 0.5, 0.0, None),
         r"v must be a floating-point tensor, got torch.int64"),
    Case("rf_msde_step with integer noise", lambda ctx: sde.rf_msde_step(X, V, 0.9, 0.5, 1.0, I64),
         r"noise must be a floating-point tensor, got torch.int64"),
    Case("vp_msde_step with an integer x", lambda ctx: sde.vp_msde_step(I64, V, 0.5, 0.8, 0.7, 0.6, 0.0, None),
         r"x must be a floating-point tensor, got torch.int64"),
    Case("ngs_x0 with an integer x0", lambda ctx: guidance.ngs_x0(I64, LQ, 0.5),
         r"x0 must be a floating-point tensor, got torch.int64"),
    Case("ngs_velocity with an integer x", lambda ctx: guidance.ngs_velocity(V, I64, LQ, 0.8, 0.0, 0.5),
         r"x must be a floating-point tensor, got torch.int64"),
    Case("ngs_eps with an integer eps", lambda ctx: guidance.ngs_eps(I64, X, LQ, 0.5, 0.8, 1.0, 0.0, 0.5),
         r"eps must be a floating-point tensor, got torch.int64"),
    Case("lq_initial_state_rf with an integer lq", lambda ctx: interpolation.lq_initial_state_rf(I64, Z, 0.5),
         r"lq must be a floating-point tensor, got torch.int64"),
    Case("implied_velocity with integer states", lambda ctx: implied_velocity(I64, I64, 0.8, 0.5),
         r"x_a must be a floating-point tensor, got torch.int64"),
    Case("ngs_x0 with an integer lq (float x0)", lambda ctx: guidance.ngs_x0(X, I64, 0.5),
         check=close(lambda: 1.5 * X - 0.5 * I64.double())),
    # extreme eta
    Case("rf_msde_step eta=1e200, t'=0.6", lambda ctx: sde.rf_msde_step(X, V, 0.9, 0.6, 1e200, Z),
         check=close(lambda: rf_limit(X, V, 0.6, Z))),
    Case("rf_msde_step eta=1e200 per sample",
         lambda ctx: sde.rf_msde_step(X, V, 0.9, 0.6, torch.tensor([1e200, 1e200], dtype=torch.float64), Z),
         check=close(lambda: rf_limit(X, V, 0.6, Z))),
    Case("rf_msde_step eta=1e200, t'=0.3 (fallback)", lambda ctx: sde.rf_msde_step(X, V, 0.6, 0.3, 1e200, Z),
         check=close(lambda: rf_at_eta_max(X, V, 0.6, 0.3, Z))),
    Case("rf_msde_step eta=1e200 in float64", lambda ctx: sde.rf_msde_step(X.double(), V.double(), 0.9, 0.6, 1e200,
                                                                            Z.double()),
         check=close(lambda: rf_limit(X, V, 0.6, Z), atol=1e-12, rtol=1e-12)),
    Case("vp_msde_step eta=1e200", lambda ctx: sde.vp_msde_step(X, V, 0.5, 0.8, 0.7, 0.6, 1e200, Z),
         r"eta = 1e\+200 is too large for this step"),
    Case("rf_msde_step eta=inf", lambda ctx: sde.rf_msde_step(X, V, 0.9, 0.6, math.inf, Z), r"eta is inf"),
    # half precision
    Case("rf_msde_step float16 result overflows", lambda ctx: sde.rf_msde_step(torch.full((1, 2), 6e4).half(),
                                                                                 torch.full((1, 2), -6e4).half(), 0.9,
                                                                                 0.0, 0.0, None),
         r"the result overflows float16: .*pass float32"),
    Case("ngs_x0 float16 result overflows", lambda ctx: guidance.ngs_x0(torch.full((1, 2), 6e4).half(),
                                                                         torch.full((1, 2), -6e4), 1.0),
         r"the result overflows float16"),
    Case("ngs_x0 float16 input holding inf",
         lambda ctx: guidance.ngs_x0(torch.full((1, 2), 7e4).half(), LQ[:1, 0, 0, :2], 0.1),
         r"x0 contains 2 (NaN or inf|inf) value"),
    Case("rf_msde_step bfloat16", lambda ctx: sde.rf_msde_step(X.bfloat16(), V.bfloat16(), 0.9, 0.6, 0.5,
                                                                 Z.bfloat16()).float(),
         check=close(lambda: sde.rf_msde_step(X.bfloat16().float(), V.bfloat16().float(), 0.9, 0.6, 0.5,
                                              Z.bfloat16().float()), atol=0.05, rtol=0.02)),
    Case("sample_msde with a float16 latent and a guided model", _half_reference, check=_check_half),
    # the sampler
    Case("sample_msde, model returns NaN", sampler_with(lambda x, s: torch.full_like(x, math.nan)),
         r"the model output \(x0\) at step 0 \(sigma 1\) contains NaN values"),
    Case("sample_msde, model returns inf at step 2",
         sampler_with(lambda x, s: x * 0.5 if float(s[0]) > 0.7 else torch.full_like(x, math.inf)),
         r"the model output \(x0\) at step 2 \(sigma 0.6\) contains inf values"),
    Case("sample_msde, model returns 1 channel", sampler_with(lambda x, s: x[:, :1]),
         r"the model output \(x0\) has shape \(2, 1, 8, 8\) but x has shape \(2, 3, 8, 8\)"),
    Case("sample_msde, model returns a batch of 1", sampler_with(lambda x, s: x[:1]),
         r"the model output \(x0\) has shape \(1, 3, 8, 8\)"),
    Case("sample_msde, integer x", sampler_with(lambda x, s: x, x=I64), r"x must be a floating-point tensor"),
    Case("sample_msde, empty batch", sampler_with(lambda x, s: x, x=torch.zeros(0, 3, 8, 8)), r"x is an empty batch"),
    Case("sample_msde, eta=1e200 (rf), point mass", sampler_with(point_mass_model(0.25), eta=1e200),
         check=close(lambda: torch.full_like(X, 0.25), atol=1e-5)),
    Case("sample_msde, eta=1e200 (ve)", sampler_with(point_mass_model(0.25), eta=1e200, param="ve",
                                                     sigmas=SIGMAS * 5), r"eta = 1e\+200 is too large"),
    Case("sample_msde, sigmas increasing", sampler_with(lambda x, s: x, sigmas=torch.tensor([0.0, 0.5, 1.0])),
         r"sigmas must be strictly decreasing"),
    # NIQE
    Case("NIQE of a flat image", lambda ctx: niqe(FLAT), r"NIQE is undefined for images \[0\]: no 96-px block"),
    Case("score('niqe') of a flat image", lambda ctx: score("niqe", torch.cat([HALF_FLAT[..., :128], FLAT])),
         r"NIQE is undefined for images \[1\]"),
    Case("NIQE of a flat image, flat='nan'", lambda ctx: niqe(FLAT, flat="nan"),
         check=holds(lambda r: r.shape == (1,) and bool(r.isnan().all()), "expected one NaN")),
    Case("NIQE of a partly flat image", lambda ctx: niqe(HALF_FLAT),
         check=holds(lambda r: bool(torch.isfinite(r).all()), "expected a finite score")),
    Case("Reward with NIQE of a flat image", lambda ctx: Reward({"niqe": 1.0})(FLAT),
         check=close(lambda: torch.zeros(1))),
    Case("NIQE of a 64 px image", lambda ctx: niqe(FLAT[..., :64, :64]), r"images is 64x64 pixels; NIQE needs"),
    # model files
    Case("load: header length 128 mod 256", load_variant("header_128"), check=_same_as_shipped),
    Case("load: header length bytes 'PK'", load_variant("header_pk"), check=_same_as_shipped),
    Case("load_compact: header length 128 mod 256", lambda ctx: load_compact(ctx.shared.model_file("header_128")),
         check=_check_compact_pair),
    Case("load: zip pickle", load_variant("pickle_zip"), r"pickle_zip\.safetensors: this is a PyTorch pickle"),
    Case("load: legacy pickle", load_variant("pickle_legacy"), r"pickle_legacy\.safetensors: this is a PyTorch pickle"),
    Case("load: empty file", load_variant("empty"),
         r"model_empty\.safetensors: .*(empty|not a (readable )?safetensors)"),
    Case("load: 5 bytes", raw_file("five.safetensors", b"\x10\0\0\0\0"),
         r"five\.safetensors: not a (readable )?safetensors"),
    Case("load: header longer than the file", raw_file("long.safetensors", _header(10**6, b"{}")),
         r"long\.safetensors: not a (readable )?safetensors file.* 1000000"),
    Case("load: header not JSON", raw_file("junk.safetensors", _header(8, b"\x80\x02junk!")),
         r"junk\.safetensors: not a (readable )?safetensors file"),
    Case("load: truncated", load_variant("truncated"), r"model_truncated\.safetensors: not a readable safetensors"),
    Case("load: a NaN weight", load_variant("nan"), r"model_nan\.safetensors: .*NaN or inf"),
    Case("load: a folder", lambda ctx: load(ctx.tmp), r"is a folder, not a model file"),
    # restoration
    Case("restore, tile 33", restore_with(tile=33, size=(128, 192)), check=_check_tiles(33, (128, 192))),
    Case("restore, tile 64 overlap 16", restore_with(tile=64, overlap=16, size=(120, 200)),
         check=_check_tiles(64, (120, 200))),
    Case("restore, tile 40 overlap 32", restore_with(tile=40, overlap=32, size=(120, 200)),
         r"(overlap must be >= 0 and at most tile // 2 \(20 for tile 40\), got 32)"),
    Case("restore, tile 5", restore_with(tile=5),
         r"(tile must be 0 .* or at least 32.*got 5|overlap must lie in \[0, tile\), got overlap=32, tile=5)"),
    Case("restore, overlap -1", restore_with(tile=32, overlap=-1),
         r"overlap must (be >= 0 and at most tile // 2.*|lie in \[0, tile\)), got (overlap=)?-1"),
    Case("restore, seed 2^64", restore_with(seed=2**64), r"seed must be an integer in \[0, 2\^64 - 1\]"),
    Case("restore, seed 1.5", restore_with(seed=1.5), r"seed must be an integer"),
    Case("restore, integer lq", restore_with(lq=torch.ones(1, 3, 8, 8, dtype=torch.uint8)),
         r"lq must be a floating-point tensor"),
    # files
    Case("write_png follows umask 022", written_mode("png", 0o022), check=mode_is(0o644)),
    Case("write_png follows umask 077", written_mode("png", 0o077), check=mode_is(0o600)),
    Case("write_tagged follows umask 022", written_mode("tagged", 0o022), check=mode_is(0o644)),
    Case("models.save follows umask 002", written_mode("model", 0o002), check=mode_is(0o664)),
    Case("checkpoint tensors follow umask 022", written_mode("checkpoint", 0o022), check=mode_is(0o644)),
    Case("read_image of a folder", _read_folder, r"pics'? is a folder, not an image file"),
    Case("read_image of a missing file", lambda ctx: read_image(ctx.tmp / "nope.png"), r"nope\.png'? does not exist"),
]
