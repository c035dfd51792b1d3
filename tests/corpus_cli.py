"""Corpus part ``cli``: ``python -m trajir.restore`` with bad images, bad options, bad model files, clashing and
unwritable outputs. Each case runs the command in-process (``corpus.run_cli``); a clear error is a non-zero exit
whose message names the input."""
import shutil
import struct
import zlib

import torch

import trajir.restore as restore_cli
from corpus import Case, run_cli
from trajir.compact import load_compact, restore, shipped_models
from trajir.data import read_image, write_png


def cli(ctx, *argv):
    return run_cli(restore_cli.main, *argv)


def watch_restores(ctx):
    """Count the restorations the command runs (``ctx.restores``): errors that can be found before the work must
    come before any of it."""
    ctx.restores = 0
    original = restore_cli.restore

    def counted(*args, **kwargs):
        ctx.restores += 1
        return original(*args, **kwargs)

    ctx.monkeypatch.setattr(restore_cli, "restore", counted)


def no_work(ctx):
    assert ctx.restores == 0, f"the error came after {ctx.restores} restoration(s)"


def no_outputs(folder):
    def check(ctx):
        no_work(ctx)
        written = sorted(p.name for p in (ctx.tmp / folder).glob("*")) if (ctx.tmp / folder).exists() else []
        assert not written, f"files were written before the error: {written}"
    return check


def photo(ctx, name="photo", **kw):
    src = ctx.shared.photo(**kw)
    dst = ctx.tmp / f"{name}.png"
    shutil.copy(src, dst)
    return dst


def expected_restoration(path, seed=0, tile=256):
    net, recipe = load_compact(shipped_models()["lowlight"])
    out = restore(net, recipe, read_image(path)[None], seed=seed, tile=tile)[0]
    return (out * 255).round() / 255  # as the PNG stores it


def written(path, like):
    """The PNG at ``path`` holds the restoration of ``like`` (8-bit rounding aside)."""
    assert path.is_file(), f"{path.name} was not written"
    got = read_image(path)
    want = expected_restoration(like)
    assert got.shape == want.shape, f"{path.name} has shape {tuple(got.shape)}, expected {tuple(want.shape)}"
    assert float((got - want).abs().max()) <= 1 / 255 + 1e-6, f"{path.name} is not the restoration of {like.name}"


def exit_ok(result):
    assert result.code == 0, f"exit {result.code}: {result.text[-300:]}"


# --- inputs --------------------------------------------------------------------------------------------------------

def _run_missing_among_others(ctx):
    watch_restores(ctx)
    return cli(ctx, photo(ctx, "a"), ctx.tmp / "missing.png", photo(ctx, "b"), "-o", ctx.tmp / "out", "--task",
               "lowlight")


def _run_directory_input(ctx):
    (ctx.tmp / "photos").mkdir()
    watch_restores(ctx)
    return cli(ctx, ctx.tmp / "photos", "--task", "lowlight", "-o", ctx.tmp / "out")


def _bad_file(name, content):
    def run(ctx):
        path = ctx.tmp / name
        path.write_bytes(content(ctx) if callable(content) else content)
        watch_restores(ctx)
        return cli(ctx, path, "--task", "lowlight", "-o", ctx.tmp / "out")
    return run


def _truncated_png(ctx):
    data = ctx.shared.photo().read_bytes()
    return data[: len(data) // 2]


def _png_chunk(kind, data):
    return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data) & 0xFFFFFFFF)


def _bomb_png(ctx):
    """A PNG header announcing 30000 x 30000 pixels (900 M): Pillow's decompression-bomb limit refuses it."""
    ihdr = struct.pack(">IIBBBBB", 30000, 30000, 8, 2, 0, 0, 0)
    return b"\x89PNG\r\n\x1a\n" + _png_chunk(b"IHDR", ihdr) + _png_chunk(b"IDAT", zlib.compress(b"\0" * 64)) + \
        _png_chunk(b"IEND", b"")


def _special_image(kind):
    def run(ctx):
        base = read_image(ctx.shared.photo())
        path = ctx.tmp / f"{kind}.png"
        if kind == "rgba":
            from PIL import Image
            arr = (base.permute(1, 2, 0) * 255).round().byte().numpy()
            alpha = torch.full(arr.shape[:2] + (1,), 128, dtype=torch.uint8).numpy()
            import numpy as np
            Image.fromarray(np.concatenate([arr, alpha], -1), "RGBA").save(path)
        elif kind == "grey16":
            from PIL import Image
            import numpy as np
            grey = (base.mean(0) * 65535).round().numpy().astype(np.uint16)
            Image.fromarray(grey).save(path)
        elif kind == "odd":
            write_png(path, base[:, :37, :53])
        elif kind == "pixel":
            write_png(path, base[:, :1, :1])
        elif kind == "spaces":
            path = ctx.tmp / "my photo ä.png"
            write_png(path, base)
        ctx.input = path
        return cli(ctx, path, "--task", "lowlight", "-o", ctx.tmp / "out.png")
    return run


def _check_special(result, ctx):
    exit_ok(result)
    out = read_image(ctx.tmp / "out.png")
    src = read_image(ctx.input)
    assert out.shape == (3, *src.shape[-2:]), f"output {tuple(out.shape)} for input {tuple(src.shape)}"
    written(ctx.tmp / "out.png", ctx.input)


# --- tiles, seeds, devices -----------------------------------------------------------------------------------------

def _run_tile(tile):
    def run(ctx):
        ctx.input = ctx.tmp / "big.png"
        shutil.copy(ctx.shared.photo(height=128, width=192), ctx.input)  # 15,360 tiles of 33 px stepping by 1 px
        watch_restores(ctx)
        return cli(ctx, ctx.input, "--task", "lowlight", "--tile", tile, "-o", ctx.tmp / "out.png")
    return run


def _check_tile_33(result, ctx):
    exit_ok(result)
    got = read_image(ctx.tmp / "out.png")
    assert got.shape == read_image(ctx.input).shape
    assert bool(torch.isfinite(got).all())


def _run_option(*options):
    def run(ctx):
        watch_restores(ctx)
        return cli(ctx, photo(ctx), "--task", "lowlight", "-o", ctx.tmp / "out.png", *options)
    return run


def _check_written_photo(result, ctx):
    exit_ok(result)
    written(ctx.tmp / "out.png", ctx.tmp / "photo.png")


# --- outputs -------------------------------------------------------------------------------------------------------

def _run_same_names(ctx):
    (ctx.tmp / "a").mkdir(), (ctx.tmp / "b").mkdir()
    ctx.a, ctx.b = ctx.tmp / "a" / "x.png", ctx.tmp / "b" / "x.png"
    shutil.copy(ctx.shared.photo(which=0), ctx.a)
    shutil.copy(ctx.shared.photo(which=1), ctx.b)
    return cli(ctx, ctx.a, ctx.b, "--task", "lowlight", "-o", ctx.tmp / "out")


def _check_same_names(result, ctx):
    exit_ok(result)
    files = sorted(p.name for p in (ctx.tmp / "out").iterdir())
    assert len(files) == 2, f"two inputs named x.png gave the outputs {files}"
    first, second = (ctx.tmp / "out" / f for f in files)
    written(ctx.tmp / "out" / "x.png", ctx.a)
    written(second if first.name == "x.png" else first, ctx.b)
    renamed = files[0] if files[1] == "x.png" else files[1]
    assert renamed in result.text, f"the message does not say where b/x.png went: {result.text[-300:]}"


def _run_same_input_twice(ctx):
    ctx.a = photo(ctx, "x")
    return cli(ctx, ctx.a, ctx.a, "--task", "lowlight", "-o", ctx.tmp / "out")


def _check_same_input_twice(result, ctx):
    exit_ok(result)
    files = sorted((ctx.tmp / "out").iterdir())
    assert len(files) == 2, f"outputs {[p.name for p in files]}"
    for f in files:
        written(f, ctx.a)


def _run_output_is_input(ctx):
    ctx.a = photo(ctx, "x")
    ctx.original = ctx.a.read_bytes()
    watch_restores(ctx)
    return cli(ctx, ctx.a, "--task", "lowlight", "-o", ctx.a)


def _run_folder_holds_input(ctx):
    (ctx.tmp / "out").mkdir()
    ctx.a = ctx.tmp / "out" / "x.png"
    shutil.copy(ctx.shared.photo(), ctx.a)
    ctx.original = ctx.a.read_bytes()
    watch_restores(ctx)
    return cli(ctx, ctx.a, photo(ctx, "y"), "--task", "lowlight", "-o", ctx.tmp / "out")


def _input_kept(ctx):
    no_work(ctx)
    assert ctx.a.read_bytes() == ctx.original, "the input was overwritten"


def _run_output(name, make=None, images=2):
    def run(ctx):
        target = ctx.tmp / name if not name.startswith("/") else name
        if make == "file":
            (ctx.tmp / name.split("/")[0]).write_text("not a folder")
        inputs = [photo(ctx, f"p{i}") for i in range(images)]
        watch_restores(ctx)
        return cli(ctx, *inputs, "--task", "lowlight", "-o", target)
    return run


def _run_full_disk(ctx):
    import collections

    usage = collections.namedtuple("usage", "total used free")
    ctx.monkeypatch.setattr(shutil, "disk_usage", lambda path: usage(10**9, 10**9 - 2000, 2000))
    watch_restores(ctx)
    return cli(ctx, photo(ctx), "--task", "lowlight", "-o", ctx.tmp / "out")


def _run_model(variant, *extra):
    def run(ctx):
        watch_restores(ctx)
        model = ctx.tmp / "models" if variant == "folder" else ctx.shared.model_file(variant)
        if variant == "folder":
            model.mkdir()
        return cli(ctx, photo(ctx), "--model", model, "-o", ctx.tmp / "out.png", *extra)
    return run


def _run_list(ctx):
    return cli(ctx, "--list")


def _check_list(result, ctx):
    exit_ok(result)
    assert "lowlight" in result.text and "underwater" in result.text


def _run_two_in_folder(ctx):
    ctx.inputs = [photo(ctx, "p0"), photo(ctx, "p1", which=1)]
    return cli(ctx, *ctx.inputs, "--task", "lowlight", "-o", ctx.tmp / "results.v2")


def _check_two_in_folder(result, ctx):
    exit_ok(result)
    for path in ctx.inputs:
        written(ctx.tmp / "results.v2" / path.name, path)


_CUDA = torch.cuda.is_available()

CASES = [
    # inputs
    Case("missing image among others", _run_missing_among_others, r"missing\.png.* does not exist",
         kinds=(SystemExit,), after=no_outputs("out")),
    Case("a folder as the image", _run_directory_input, r"photos'? is a folder, not an image", kinds=(SystemExit,),
         after=no_work),
    Case("empty image file", _bad_file("empty.png", b""), r"cannot read image .*empty\.png", kinds=(SystemExit,),
         after=no_work),
    Case("text file named .png", _bad_file("notes.png", b"shopping list\n"), r"cannot read image .*notes\.png",
         kinds=(SystemExit,), after=no_work),
    Case("truncated PNG", _bad_file("cut.png", _truncated_png), r"cannot read image .*cut\.png",
         kinds=(SystemExit,), after=no_work),
    Case("decompression bomb", _bad_file("bomb.png", _bomb_png), r"cannot read image .*bomb\.png",
         kinds=(SystemExit,), after=no_work),
    Case("RGBA image", _special_image("rgba"), check=_check_special),
    Case("16-bit grey image", _special_image("grey16"), check=_check_special),
    Case("odd size 37 x 53", _special_image("odd"), check=_check_special),
    Case("a single pixel", _special_image("pixel"), check=_check_special),
    Case("spaces and non-ASCII in the name", _special_image("spaces"), check=_check_special),
    Case("no images at all", lambda ctx: cli(ctx), r"give at least one image", kinds=(SystemExit,)),
    # tiles
    Case("--tile 33 on a 192 x 128 photo", _run_tile(33), check=_check_tile_33),
    Case("--tile 7", _run_tile(7), r"--tile must be 0 .* or at least 32.*got 7", kinds=(SystemExit,),
         after=no_work),
    Case("--tile -1", _run_tile(-1), r"--tile must be 0 .* or at least 32.*got -1", kinds=(SystemExit,),
         after=no_work),
    Case("--tile 0 (whole image)", _run_option("--tile", "0"), check=_check_written_photo),
    Case("--tile larger than the image", _run_option("--tile", "4096"), check=_check_written_photo),
    Case("--tile abc", _run_option("--tile", "abc"), r"argument --tile: invalid int value", kinds=(SystemExit,)),
    # seeds and devices
    Case("--seed 2^70", _run_option("--seed", str(2**70)), r"--seed must be an integer in \[0, 2\^64 - 1\]",
         kinds=(SystemExit,), after=no_work),
    Case("--seed 2^64 - 1", _run_option("--seed", str(2**64 - 1)), check=lambda r, ctx: exit_ok(r)),
    Case("--seed abc", _run_option("--seed", "abc"), r"argument --seed: invalid int value", kinds=(SystemExit,)),
    Case("--device bogus", _run_option("--device", "bogus"), r"--device 'bogus'", kinds=(SystemExit,),
         after=no_work),
    Case("--device cuda without CUDA", _run_option("--device", "cuda"), r"--device 'cuda'.* CUDA is not available",
         kinds=(SystemExit,), after=no_work, skip="CUDA is available here" if _CUDA else None),
    Case("--task sky", _run_option("--task", "sky"), r"no shipped restorer for task 'sky'", kinds=(SystemExit,)),
    Case("--list", _run_list, check=_check_list),
    # outputs
    Case("two inputs with the same name", _run_same_names, check=_check_same_names),
    Case("the same input twice", _run_same_input_twice, check=_check_same_input_twice),
    Case("-o is the input itself", _run_output_is_input, r"would overwrite the input .*x\.png", kinds=(SystemExit,),
         after=_input_kept),
    Case("-o folder holding an input", _run_folder_holds_input, r"would overwrite the input .*x\.png",
         kinds=(SystemExit,), after=_input_kept),
    Case("-o an existing file for two images", _run_output("existing.txt", make="file"),
         r"existing\.txt.* is a file, not a folder", kinds=(SystemExit,), after=no_work),
    Case("-o below a file", _run_output("existing.txt/sub", make="file", images=1),
         r"cannot write .*existing\.txt", kinds=(SystemExit,), after=no_work),
    Case("-o x.png for two images", _run_output("both.png"), r"-o .*both\.png'? names one file but 2 images",
         kinds=(SystemExit,), after=no_outputs("both.png")),
    Case("-o a .jpg file", _run_output("out.jpg", images=1), r"out\.jpg.*writes PNG", kinds=(SystemExit,),
         after=no_work),
    Case("-o an unwritable folder", _run_output("/proc/self"), r"cannot write .*/proc/self", kinds=(SystemExit,),
         after=no_work),
    Case("-o a folder that cannot be created", _run_output("/proc/trajir_out", images=1),
         r"cannot write .*/proc/trajir_out", kinds=(SystemExit,), after=no_work),
    Case("-o a full disk", _run_full_disk, r"not enough free space .*out", kinds=(SystemExit,), after=no_work),
    Case("-o a folder name with a dot", _run_two_in_folder, check=_check_two_in_folder),
    # model files
    Case("model with a NaN weight", _run_model("nan"), r"model_nan\.safetensors.* NaN or inf", kinds=(SystemExit,),
         after=no_work),
    Case("model with an inf weight", _run_model("inf"), r"model_inf\.safetensors.* NaN or inf", kinds=(SystemExit,),
         after=no_work),
    Case("truncated model", _run_model("truncated"), r"model_truncated\.safetensors.* not a readable safetensors",
         kinds=(SystemExit,), after=no_work),
    Case("empty model file", _run_model("empty"), r"model_empty\.safetensors.* (empty|not a readable safetensors)",
         kinds=(SystemExit,), after=no_work),
    Case("PyTorch zip pickle as model", _run_model("pickle_zip"), r"model_pickle_zip\.safetensors.* pickle",
         kinds=(SystemExit,), after=no_work),
    Case("legacy pickle as model", _run_model("pickle_legacy"), r"model_pickle_legacy\.safetensors.* pickle",
         kinds=(SystemExit,), after=no_work),
    Case("valid model, header length 128 mod 256", _run_model("header_128"), check=_check_written_photo),
    Case("valid model, header length bytes 'PK'", _run_model("header_pk"), check=_check_written_photo),
    Case("model without a recipe", _run_model("no_recipe"), r"model_no_recipe\.safetensors has no sampling recipe",
         kinds=(SystemExit,), after=no_work),
    Case("model of another kind", _run_model("lq_encoder"), r"model_lq_encoder\.safetensors holds a lq_encoder",
         kinds=(SystemExit,), after=no_work),
    Case("a folder as the model", _run_model("folder"), r"models'? is a folder, not a model file",
         kinds=(SystemExit,), after=no_work),
]
