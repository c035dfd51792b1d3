"""Writes the shipped workflows (``workflows/*.json``, ComfyUI UI format) and the template browser's one-line
descriptions (``web/template_descriptions.json``) from the catalogue below.

ComfyUI 0.3.64 lists a pack's templates by file name only (``GET /workflow_templates``) and its frontend 1.27
shows that name as the card's title and again as its description, so the file names are the titles; the pack's
web extension (``web/trajir.js``) puts the descriptions on the cards.

Run from the repository root after changing a workflow or a node's inputs:
``python workflows/build_workflows.py`` (``--check`` reports files that differ instead of writing them).
"""
import argparse
import json
import pathlib
import sys

from graph import REPO, Graph, definitions

HERE = pathlib.Path(__file__).resolve().parent
DESCRIPTIONS = REPO / "web" / "template_descriptions.json"
HF = "https://huggingface.co"

# Every file a loader names, with where ComfyUI's Missing Models dialog downloads it from (the Comfy-Org mirrors
# ComfyUI's own templates use, else the model's own repository) and the folder under ComfyUI/models/.
MODELS = {
    "flux1-dev.safetensors": (f"{HF}/Comfy-Org/flux1-dev/resolve/main/flux1-dev.safetensors", "diffusion_models"),
    "flux1-dev-kontext_fp8_scaled.safetensors": (
        f"{HF}/Comfy-Org/flux1-kontext-dev_ComfyUI/resolve/main/split_files/diffusion_models/"
        "flux1-dev-kontext_fp8_scaled.safetensors", "diffusion_models"),
    "ae.safetensors": (f"{HF}/Comfy-Org/Lumina_Image_2.0_Repackaged/resolve/main/split_files/vae/ae.safetensors",
                       "vae"),
    "clip_l.safetensors": (f"{HF}/comfyanonymous/flux_text_encoders/resolve/main/clip_l.safetensors",
                           "text_encoders"),
    "t5xxl_fp16.safetensors": (f"{HF}/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp16.safetensors",
                               "text_encoders"),
    "t5xxl_fp8_e4m3fn_scaled.safetensors": (
        f"{HF}/comfyanonymous/flux_text_encoders/resolve/main/t5xxl_fp8_e4m3fn_scaled.safetensors", "text_encoders"),
    "jasperai-Flux.1-dev-Controlnet-Upscaler.safetensors": (
        f"{HF}/jasperai/Flux.1-dev-Controlnet-Upscaler/resolve/main/diffusion_pytorch_model.safetensors",
        "controlnet"),
    "Shakker-Labs-FLUX.1-dev-ControlNet-Union-Pro.safetensors": (
        f"{HF}/Shakker-Labs/FLUX.1-dev-ControlNet-Union-Pro/resolve/main/diffusion_pytorch_model.safetensors",
        "controlnet"),
}
KONTEXT_MODEL = "flux1-dev-kontext_fp8_scaled.safetensors"
FLUXIR_CONTROLNET = "trajir_fluxir_controlnet.safetensors"  # trained with python -m trajir.train: no download
UPSCALER = "jasperai-Flux.1-dev-Controlnet-Upscaler.safetensors"
UNION = "Shakker-Labs-FLUX.1-dev-ControlNet-Union-Pro.safetensors"

# ComfyUI's SetUnionControlNetType offers the SDXL union's names (comfy/cldm/control_types.py) and passes their
# index straight to the ControlNet's mode embedding; the FLUX Union models number their modes canny 0, tile 1,
# depth 2, blur 3, pose 4, gray 5, low quality 6 (model cards). So for FLUX:
UNION_OPTION_FOR_MODE = {"tile": "depth", "blur": "canny/lineart/anime_lineart/mlsd", "low quality": "tile"}

LICENCE_DEV = ("FLUX.1-dev and the ControlNets trained on it are under the FLUX.1 [dev] Non-Commercial License "
               "(black-forest-labs/FLUX.1-dev; the ControlNets' model cards say the same): no commercial use.")
NOT_MEASURED = ("Restoration quality with these weights was not measured by this project (it is tested with "
                "random weights of the same file layouts); the defaults are the model cards' values.")
PIXEL_CAP = 1.0


def model_entry(name):
    url, directory = MODELS[name]
    return {"name": name, "url": url, "directory": directory}


def flux_loaders(g, unet="flux1-dev.safetensors", t5="t5xxl_fp16.safetensors"):
    model = g.add("UNETLoader", 0, {"unet_name": unet, "weight_dtype": "default"}, models=[model_entry(unet)])
    clip = g.add("DualCLIPLoader", 0, {"clip_name1": "clip_l.safetensors", "clip_name2": t5, "type": "flux"},
                 models=[model_entry("clip_l.safetensors"), model_entry(t5)])
    vae = g.add("VAELoader", 0, {"vae_name": "ae.safetensors"}, models=[model_entry("ae.safetensors")])
    return model, clip, vae


def sample_input(g, column, photo, task, downscale=1, title=None):
    return g.add("TrajIRSampleImage", column, {"photo": photo, "task": task, "strength": 0.5, "seed": 0, "size": 0,
                                                 "downscale": downscale},
                 title=title or "Input: a bundled photo, degraded (connect your image to 'image', task none)")


def scores(g, column, before, after, metric, title, weights="", reference=None):
    """A Reward Scorer over the batch [before, after]; its table is shown on the node (web/trajir.js)."""
    batch = g.add("ImageBatch", column, links={"image1": before, "image2": after}, title="0 = input, 1 = restored")
    links = {"images": batch}
    if reference is not None:
        links["reference"] = reference
    return g.add("TrajIRRewardScorer", column, {"metric": metric, "weights": weights}, links, title=title,
                 size=[340, 300])


def show(g, column, left, right, title="input | restored"):
    stitched = g.add("ImageStitch", column, {"direction": "right", "match_image_size": True, "spacing_width": 0,
                                             "spacing_color": "white"}, {"image1": left, "image2": right})
    g.add("PreviewImage", column, links={"images": stitched}, title=title, size=[420, 360])
    return stitched


def trajir_sampling(g, column, model, positive, negative, lq_latent, steps, start_step=1, w=0.05, eta=0.3):
    """BasicScheduler -> TrajIR LQ Initial State (Eq. 17) + Negative LQ Guidance (Eq. 19-20) + M-SDE Sampler ->
    SamplerCustomAdvanced; returns the sampled LATENT."""
    sched = g.add("BasicScheduler", column, {"scheduler": "simple", "steps": steps, "denoise": 1.0},
                  {"model": model})
    start = g.add("TrajIRLQInitialState", column, {"start_mode": "step", "start_step": start_step},
                  {"model": model, "lq_latent": lq_latent, "sigmas": sched})
    guider = g.add("TrajIRNegativeLQGuidance", column, {"cfg": 1.0, "w": w},
                   {"model": model, "positive": positive, "negative": negative, "lq_latent": lq_latent})
    sampler = g.add("TrajIRMSDESampler", column, {"eta": eta, "eta_schedule": "constant", "window": "percent",
                                                  "sde_start": 0.0, "sde_end": 0.5})
    noise = g.add("RandomNoise", column, {"noise_seed": 42})
    return g.add("SamplerCustomAdvanced", column + 1, links={
        "noise": noise, "guider": guider, "sampler": sampler, "sigmas": start.out("sigmas"),
        "latent_image": start.out("latent")})


SAMPLING_NOTE = ("**TrajIR sampling:** LQ Initial State starts at step {start} of {steps} from the encoded input "
                 "mixed with noise (FLUX-IR Eq. 17); Negative LQ Guidance (cfg 1, w 0.05) pushes each clean "
                 "estimate away from the input (Eq. 19-20; w 0 is plain CFGGuider); the M-SDE Sampler adds "
                 "modulated noise in the first half (eta 0.3; eta 0 is the deterministic euler sampler).")


# ---- zero-download workflows -----------------------------------------------------------------------------------

def compact_workflow(g, task, photo, metric_weights, prefix, title):
    pair = sample_input(g, 0, photo, task, title="Input: a held-out bundled photo, degraded")
    restored = g.add("TrajIRCompactRestore", 1, {"model": f"{task} (shipped)", "seed": 0, "tile": 256,
                                                "colour": "from model"},
                     {"image": pair.out("lq")})
    stitched = g.add("ImageStitch", 1, {"direction": "right", "match_image_size": True, "spacing_width": 0,
                                        "spacing_color": "white"}, {"image1": pair.out("lq"), "image2": restored})
    both = g.add("ImageStitch", 2, {"direction": "right", "match_image_size": True, "spacing_width": 0,
                                    "spacing_color": "white"}, {"image1": stitched, "image2": pair.out("gt")})
    g.add("SaveImage", 2, {"filename_prefix": prefix}, {"images": both}, title="degraded | restored | ground truth",
          size=[560, 330])
    scores(g, 1, pair.out("lq"), restored, "custom", title, weights=metric_weights, reference=pair.out("gt"))
    return pair


def build_lowlight_compact(g):
    compact_workflow(g, "lowlight", "coffee", "psnr=1, ssim=1", "trajir/lowlight_compact",
                     "Scores vs ground truth: 0 = input, 1 = restored")
    g.note(3, """## Low light - compact restorer, no download

Runs with the pack alone, on a CPU in a few seconds: **TrajIR Sample Image** darkens a bundled photo that the
restorer never saw in training (synthetic low light + sensor noise, `strength` 0 = mildest, 1 = strongest);
**TrajIR Compact Restore** restores it with the shipped 2-step distilled low-light model (0.63 M parameters,
`trajir/weights/`); the comparison shows degraded | restored | ground truth and the **Reward Scorer** shows
PSNR (dB) and SSIM of the input (row 0) and the restored image (row 1) on the node.

Try other photos, strengths or seeds. For your own photo, connect a Load Image node to the Sample Image's
`image` input and set `task` to none (the scores then compare with your photo itself: use a no-reference
metric such as `niqe`).

These restorers are CPU-scale demonstrations of the FLUX-IR recipe trained on four photos, not
general-purpose models (their model card: `trajir/weights/README.md`).""")


def build_underwater_compact(g):
    compact_workflow(g, "underwater", "chelsea", "psnr=1, ssim=1, uciqe=1", "trajir/underwater_compact",
                     "Scores vs ground truth: 0 = input, 1 = restored")
    g.note(3, """## Underwater - compact restorer, no download

Runs with the pack alone, on a CPU in a few seconds: **TrajIR Sample Image** gives a bundled photo (held out
of training) an underwater look (depth-dependent colour absorption, backscatter, forward-scatter blur);
**TrajIR Compact Restore** restores it with the shipped 2-step distilled underwater model; the comparison shows
degraded | restored | ground truth and the **Reward Scorer** shows PSNR, SSIM and UCIQE (an underwater colour
metric, higher is better) of the input (row 0) and the restored image (row 1).

For your own photo, connect a Load Image node to the Sample Image's `image` input and set `task` to none, and
score with a no-reference metric (`uciqe`, `uiqm`).

A CPU-scale demonstration of the FLUX-IR recipe trained on four photos, not a general-purpose model
(`trajir/weights/README.md`).""")


def build_evaluate(g):
    pair = sample_input(g, 0, "chelsea", "lowlight", title="Input: a held-out bundled photo, degraded")
    restored = g.add("TrajIRCompactRestore", 1, {"model": "lowlight (shipped)", "seed": 0, "tile": 256,
                                                        "colour": "from model"},
                     {"image": pair.out("lq")}, title="The restorer under test")
    show(g, 2, pair.out("lq"), restored, title="degraded | restored")
    scores(g, 1, pair.out("lq"), restored, "custom", "PSNR, SSIM, NIQE: 0 = input, 1 = restored",
           weights="psnr=1, ssim=1, niqe=1", reference=pair.out("gt"))
    g.note(3, """## Evaluate a restorer - PSNR, SSIM, NIQE

Measures a restorer on a bundled photo with a known ground truth: **TrajIR Sample Image** degrades the photo
(pick the `task`, `strength` and `seed`), the restorer restores it, and the **Reward Scorer** shows, for the
degraded input (row 0) and the restored image (row 1): PSNR (dB, higher is better) and SSIM against the ground
truth, and NIQE (no-reference, lower is better); `reward` is their normalised mean.

Swap **TrajIR Compact Restore** for any restoration chain (a FLUX workflow's nodes, another pack's restorer)
and connect its output where the restorer's is. Set the Compact Restore `model` to a model of the same task,
or to your own export of `python -m trajir.train` in `ComfyUI/models/trajir/`.

`chelsea` and `coffee` were held out of the shipped restorers' training; the other photos were trained on.""")


# ---- public FLUX models ------------------------------------------------------------------------------------------

def build_controlnet_restore(g, task, photo, cn_file, cn_type, strength, prompt, scale_by, downscale, metric,
                             prefix, note):
    model, clip, vae = flux_loaders(g)
    cn = g.add("ControlNetLoader", 0, {"control_net_name": cn_file}, models=[model_entry(cn_file)])
    if cn_type is not None:
        cn = g.add("SetUnionControlNetType", 0, {"type": cn_type}, {"control_net": cn},
                   title=f"Union mode for FLUX: option '{cn_type}'")
    pair = sample_input(g, 0, photo, task, downscale)
    sized = g.add("TrajIRScaleWithCap", 1, {"scale_by": scale_by, "max_megapixels": PIXEL_CAP,
                                            "upscale_method": "lanczos"}, {"image": pair.out("lq")},
                  title=f"x{scale_by:g}, at most {PIXEL_CAP:g} MP (1024 x 1024)")
    text = g.add("CLIPTextEncode", 1, {"text": prompt}, {"clip": clip}, title="Prompt")
    positive = g.add("FluxGuidance", 1, {"guidance": 3.5}, {"conditioning": text})
    negative = g.add("ConditioningZeroOut", 1, links={"conditioning": text}, title="Negative (unused at cfg 1)")
    applied = g.add("ControlNetApplyAdvanced", 1, {"strength": strength, "start_percent": 0.0, "end_percent": 1.0},
                    {"positive": positive, "negative": negative, "control_net": cn, "image": sized, "vae": vae})
    encoded = g.add("VAEEncode", 1, links={"pixels": sized, "vae": vae}, title="Encode the input")
    sampled = trajir_sampling(g, 2, model, applied.out("positive"), applied.out("negative"), encoded, 28)
    restored = g.add("VAEDecode", 3, links={"samples": sampled, "vae": vae})
    g.add("SaveImage", 4, {"filename_prefix": prefix}, {"images": restored}, size=[420, 360])
    show(g, 4, sized, restored)
    scores(g, 3, sized, restored, metric, f"{metric.upper()} (no reference): 0 = input, 1 = restored")
    g.note(5, note)


def vram_note(extra):
    return ("**GPU memory, counted from the weights:** FLUX.1-dev 23.8 GB in bf16 (11.9 B parameters; UNETLoader "
            f"`weight_dtype` fp8_e4m3fn halves it), {extra}, the VAE 0.2 GB, T5-XXL 9.5 GB in fp16 (needed only "
            "to encode the prompt); ComfyUI offloads what does not fit, more slowly.")


def files_note(*names):
    """The ``**Files**`` paragraph: each file's folder and source repository, and a renaming hint for files whose
    download has another name (a browser saves a diffusers ControlNet as diffusion_pytorch_model.safetensors)."""
    lines, renamed = [], []
    for name in names:
        url, directory = MODELS[name]
        lines.append(f"- `models/{directory}/{name}` ({url.split('/resolve/')[0].removeprefix(HF + '/')})")
        if url.rsplit("/", 1)[1] != name:
            renamed.append(name)
    head = "**Files** (the Missing Models dialog offers the downloads"
    if renamed:
        head += (f"; a browser saves {'each' if len(renamed) > 1 else 'the'} ControlNet as "
                 "`diffusion_pytorch_model.safetensors`: rename it to the name below")
    return head + "):\n" + "\n".join(lines)


def build_sr(g):
    cap = int(PIXEL_CAP * 1024 * 1024)
    build_controlnet_restore(
        g, "sr", "astronaut", UPSCALER, None, 0.6, "", 4.0, 4, "niqe", "trajir/sr_flux",
        f"""## Super-resolution x4 - FLUX.1-dev + jasperai Upscaler ControlNet

**TrajIR Sample Image** shrinks a bundled photo 4 times after a real-world degradation (blur, noise, JPEG);
**TrajIR Scale (Pixel Cap)** scales it x4 with Lanczos but **never beyond {PIXEL_CAP:g} megapixel** (1024 x 1024 =
{cap:,} pixels, FLUX.1-dev's native size; raise `max_megapixels` up to about 2 if your GPU allows): a
3000 x 4000 phone photo becomes 880 x 1168, not a 192-megapixel FLUX pass. Crop first to upscale a detail.
The jasperai ControlNet (InstantX/diffusers format, ControlNetApplyAdvanced with the VAE) conditions FLUX.1-dev
on that image; the result is scored with NIQE (no reference, lower is better) next to the input.

**Defaults from the model card:** empty prompt, ControlNet strength 0.6, 28 steps, guidance 3.5.

{SAMPLING_NOTE.format(start=1, steps=28)}

{files_note("flux1-dev.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors", UPSCALER)}

{vram_note("the ControlNet 3.6 GB")}

**Licence:** {LICENCE_DEV}

{NOT_MEASURED}""")


UNION_NOTE = f"""**Union mode.** ComfyUI's SetUnionControlNetType lists the SDXL union's names and passes their
position to the model; the FLUX Union ControlNets number their modes canny 0, tile 1, depth 2, blur 3, pose 4,
gray 5, low quality 6 (Union-Pro model card). So for FLUX: **tile = option `{UNION_OPTION_FOR_MODE['tile']}`**,
**blur = option `{UNION_OPTION_FOR_MODE['blur']}`**, **low quality = option `{UNION_OPTION_FOR_MODE['low quality']}`**
(ComfyUI issue 4823). Union-Pro 2.0 has no tile, blur or low-quality mode: use Union-Pro (v1) or InstantX's Union."""


def union_workflow(g, task, photo, mode, prompt, prefix, heading, what):
    option = UNION_OPTION_FOR_MODE[mode]
    build_controlnet_restore(
        g, task, photo, UNION, option, 0.6, prompt, 1.0, 1, "niqe", prefix,
        f"""## {heading} - FLUX.1-dev + Union ControlNet ({mode} mode)

**TrajIR Sample Image** {what}; **TrajIR Scale (Pixel Cap)** keeps it at its size unless it exceeds
{PIXEL_CAP:g} megapixel (1024 x 1024), then shrinks it to that. The Shakker-Labs Union-Pro ControlNet in its
**{mode}** mode conditions FLUX.1-dev on the image (ControlNetApplyAdvanced with the VAE); the result is
scored with NIQE (no reference, lower is better) next to the input.

{UNION_NOTE}

**Defaults:** 28 steps and guidance 3.5 (FLUX.1-dev's model card), ControlNet strength 0.6 (inside the 0.3-0.8
the Union-Pro card recommends); the prompt is ours, a short description of the wanted result.

{SAMPLING_NOTE.format(start=1, steps=28)}

{files_note("flux1-dev.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors", UNION)}

{vram_note("the Union-Pro ControlNet 6.6 GB in its bf16 file")}

**Licence:** {LICENCE_DEV}

{NOT_MEASURED}""")


def build_deblur(g):
    union_workflow(g, "deblur", "rocket", "blur", "sharp, deblurred, clear", "trajir/deblur_union", "Motion deblur",
                   "blurs a bundled photo with a camera-shake streak")


def build_jpeg(g):
    union_workflow(g, "jpeg", "coffee", "low quality", "high-quality photo, clean, sharp, detailed",
                   "trajir/jpeg_union", "JPEG artifacts", "compresses a bundled photo to JPEG at low quality")


def build_denoise(g):
    union_workflow(g, "denoise", "chelsea", "low quality", "noise-free, clean, smooth", "trajir/denoise_union",
                   "Denoise", "adds Gaussian noise to a bundled photo")


KONTEXT_INSTRUCTIONS = {
    "derain": "Remove the rain streaks from the photo. Keep the scene, composition, colors and details unchanged.",
    "raindrop": "Remove the raindrops on the lens from the photo. Keep the scene, composition, colors and details "
                "unchanged.",
    "desnow": "Remove the falling snow and snowflakes from the photo. Keep the scene, composition, colors and "
              "details unchanged.",
    "lowlight": "Brighten this dark, underexposed photo to a natural exposure and remove the noise. Keep the scene, "
                "composition and details unchanged.",
    "underwater": "Remove the blue-green color cast and the haze of this underwater photo and restore natural "
                  "colors. Keep the scene, composition and details unchanged.",
    "dehaze": "Remove the haze and fog from the photo and restore its contrast and colors. Keep the scene, "
              "composition and details unchanged.",
}


def kontext_workflow(g, task, photo, heading, what):
    metric = "uciqe" if task == "underwater" else "niqe"
    better = "higher" if metric == "uciqe" else "lower"
    model, clip, vae = flux_loaders(g, KONTEXT_MODEL, "t5xxl_fp8_e4m3fn_scaled.safetensors")
    pair = sample_input(g, 0, photo, task)
    sized = g.add("FluxKontextImageScale", 1, links={"image": pair.out("lq")})
    encoded = g.add("VAEEncode", 1, links={"pixels": sized, "vae": vae}, title="Encode the input")
    text = g.add("CLIPTextEncode", 1, {"text": KONTEXT_INSTRUCTIONS[task]}, {"clip": clip}, title="Instruction")
    reference = g.add("ReferenceLatent", 1, links={"conditioning": text, "latent": encoded})
    positive = g.add("FluxGuidance", 1, {"guidance": 2.5}, {"conditioning": reference})
    negative = g.add("ConditioningZeroOut", 1, links={"conditioning": text}, title="Negative (unused at cfg 1)")
    sampled = trajir_sampling(g, 2, model, positive, negative, encoded, 28)
    restored = g.add("VAEDecode", 3, links={"samples": sampled, "vae": vae})
    g.add("SaveImage", 4, {"filename_prefix": f"trajir/{task}_kontext"}, {"images": restored}, size=[420, 360])
    show(g, 4, sized, restored)
    scores(g, 3, sized, restored, metric, f"{metric.upper()} (no reference): 0 = input, 1 = restored")
    g.note(5, f"""## {heading} - FLUX.1 Kontext dev

**TrajIR Sample Image** {what}; FluxKontextImageScale resizes it to the nearest of Kontext's preferred sizes
(about 1 megapixel); ReferenceLatent gives FLUX.1 Kontext dev the encoded image together with the instruction

> {KONTEXT_INSTRUCTIONS[task]}

and the result is scored with {metric.upper()} (no reference, {better} is better) next to the input. Edit the
instruction to taste; Kontext follows plain imperative sentences.

**Defaults from the model card:** guidance 2.5, 28 steps.

{SAMPLING_NOTE.format(start=1, steps=28)}

{files_note(KONTEXT_MODEL, "clip_l.safetensors", "t5xxl_fp8_e4m3fn_scaled.safetensors", "ae.safetensors")}

**GPU memory, counted from the weights:** FLUX.1 Kontext dev 11.9 GB in this fp8 file, T5-XXL 4.9 GB in fp8
(needed only to encode the instruction), the VAE 0.2 GB; ComfyUI offloads what does not fit, more slowly.

**Licence:** FLUX.1 Kontext dev is under the FLUX.1 [dev] Non-Commercial License (black-forest-labs): no
commercial use.

{NOT_MEASURED}""")


def build_kontext(task, heading, what):
    return lambda g: kontext_workflow(g, task, KONTEXT_PHOTOS[task], heading, what)


KONTEXT_PHOTOS = {"derain": "rocket", "raindrop": "coffee", "desnow": "astronaut", "lowlight": "chelsea",
                  "underwater": "coffee", "dehaze": "rocket"}


def build_best_of_n_sr(g):
    model, clip, vae = flux_loaders(g)
    cn = g.add("ControlNetLoader", 0, {"control_net_name": UPSCALER}, models=[model_entry(UPSCALER)])
    pair = sample_input(g, 0, "astronaut", "sr", 4)
    sized = g.add("TrajIRScaleWithCap", 1, {"scale_by": 4.0, "max_megapixels": PIXEL_CAP,
                                            "upscale_method": "lanczos"}, {"image": pair.out("lq")},
                  title=f"x4, at most {PIXEL_CAP:g} MP (1024 x 1024)")
    text = g.add("CLIPTextEncode", 1, {"text": ""}, {"clip": clip}, title="Prompt")
    positive = g.add("FluxGuidance", 1, {"guidance": 3.5}, {"conditioning": text})
    negative = g.add("ConditioningZeroOut", 1, links={"conditioning": text}, title="Negative (unused at cfg 1)")
    applied = g.add("ControlNetApplyAdvanced", 1, {"strength": 0.6, "start_percent": 0.0, "end_percent": 1.0},
                    {"positive": positive, "negative": negative, "control_net": cn, "image": sized, "vae": vae})
    encoded = g.add("VAEEncode", 1, links={"pixels": sized, "vae": vae}, title="Encode the input")
    sched = g.add("BasicScheduler", 2, {"scheduler": "simple", "steps": 28, "denoise": 1.0}, {"model": model})
    start = g.add("TrajIRLQInitialState", 2, {"start_mode": "step", "start_step": 1},
                  {"model": model, "lq_latent": encoded, "sigmas": sched})
    guider = g.add("TrajIRNegativeLQGuidance", 2, {"cfg": 1.0, "w": 0.05},
                   {"model": model, "positive": applied.out("positive"), "negative": applied.out("negative"),
                    "lq_latent": encoded})
    noise = g.add("RandomNoise", 2, {"noise_seed": 42})
    reward = g.add("TrajIRRewardScorer", 2, {"metric": "niqe", "weights": ""}, {"images": sized},
                   title="Reward: NIQE (no reference); the node shows the input's", size=[340, 260])
    best = g.add("TrajIRBestOfN", 3, {"candidates": 4, "mode": "single_step", "branch_step": 5, "eta": 1.0,
                                      "eta_mode": "random", "batch_size": 2, "save_branch": True,
                                      "filename": "trajir/branches/sr_best_of_n", "branch_at": "fraction",
                                      "branch_fraction": 0.25},
                 {"guider": guider, "noise": noise, "sigmas": start.out("sigmas"),
                  "latent_image": start.out("latent"), "vae": vae, "reward": reward.out("reward")})
    g.add("SaveImage", 4, {"filename_prefix": "trajir/sr_best_of_n"}, {"images": best.out("best_image")},
          title="Best candidate", size=[420, 360])
    g.add("PreviewImage", 4, links={"images": best.out("candidates")}, title="All candidates (ODE first)",
          size=[420, 360])
    g.add("PreviewAny", 3, links={"source": best.out("scores")}, title="Reward per candidate (* = best)",
          size=[360, 260])
    g.note(5, f"""## Best-of-N super-resolution - FLUX.1-dev + jasperai Upscaler ControlNet

The x4 chain of the super-resolution workflow (output at most {PIXEL_CAP:g} megapixel) run as **TrajIR
Best-of-N**: the ODE trajectory and 4 M-SDE branches (one M-SDE step a quarter of the way through the schedule,
`branch_at` fraction 0.25, then ODE; eta^2 uniform in [0, 1)), each decoded and scored with a no-reference reward
(NIQE through the Reward Scorer; lower NIQE is a higher reward); the best is saved and the table shows every
candidate's reward. With `save_branch` the best branch (the states at t_k and t_k+1, the times, eta, the reward
and the step's conditioning) is written to `output/trajir/branches/` (a counter is added, nothing is
overwritten): the training records of `python -m trajir.train` (`run.stage=rl`, `rl.records=...`).

Five trajectories cost about five times the single run; `batch_size` sets how many go through the model at
once (lower it if memory runs out).

{files_note("flux1-dev.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors", UPSCALER)}

{vram_note("the ControlNet 3.6 GB")}

**Licence:** {LICENCE_DEV}

{NOT_MEASURED}""")


# ---- FLUX-IR ControlNet (trained with python -m trajir.train) ----------------------------------------------------

FLUXIR_TASKS = {  # key -> (heading, sample task, photo, paper prompt, metric)
    "super-resolution": ("Super-resolution", "sr", "astronaut", "high-resolution, ultra-sharp, detailed", "niqe"),
    "motion deblur": ("Motion deblur", "deblur", "rocket", "sharp, deblurred, clear", "niqe"),
    "denoise": ("Denoise", "denoise", "chelsea", "noise-free, clean, smooth", "niqe"),
    "low light": ("Low light", "lowlight", "coffee", "bright, clear, vivid", "niqe"),
    "derain": ("Rain streaks / raindrops", "derain", "rocket", "remove rain streaks, dehaze, improve visibility",
               "niqe"),
    "desnow": ("Desnow", "desnow", "astronaut", "remove snowflakes, snow-free", "niqe"),
    "underwater": ("Underwater", "underwater", "coffee", "clear, reduce backscatter, restore colors", "uciqe"),
}
FLUXIR_TRAINING = """**Needs a trained FLUX-IR ControlNet**, which no one can download: train it with
`python -m trajir.train fluxir_controlnet` (GPU; the commands of both stages are at the top of
`trajir/train/configs/fluxir_controlnet.toml`) and copy the export `trajir_fluxir_controlnet.safetensors` into
`ComfyUI/models/controlnet/`. Until then ComfyUI reports that file as missing when the prompt is queued; the
other files are listed for the Missing Models dialog."""


def fluxir_chain(g, task, photo, prompt, downscale):
    model, clip, vae = flux_loaders(g)
    shifted = g.add("ModelSamplingFlux", 0, {"max_shift": 0.4675, "base_shift": 0.4675, "width": 1024,
                                             "height": 1024}, {"model": model},
                    title="FLUX-IR's shifted grid (shift 0.4675)")
    cn = g.add("ControlNetLoader", 0, {"control_net_name": FLUXIR_CONTROLNET},
               title="FLUX-IR ControlNet (train it first, see the note)")
    pair = sample_input(g, 0, photo, task, downscale)
    image = pair.out("lq")
    if downscale > 1:
        image = g.add("TrajIRScaleWithCap", 1, {"scale_by": float(downscale), "max_megapixels": PIXEL_CAP,
                                                "upscale_method": "lanczos"}, {"image": image},
                      title=f"x{downscale}, at most {PIXEL_CAP:g} MP (FLUX-IR restores at the output size)")
    text = g.add("CLIPTextEncode", 1, {"text": prompt}, {"clip": clip}, title="Task prompt (FLUX-IR)")
    positive = g.add("FluxGuidance", 1, {"guidance": 4.0}, {"conditioning": text})
    negative_text = g.add("CLIPTextEncode", 1, {"text": ""}, {"clip": clip}, title="Negative prompt (cfg > 1)")
    applied = g.add("ControlNetApplyAdvanced", 1, {"strength": 0.85, "start_percent": 0.0, "end_percent": 1.0},
                    {"positive": positive, "negative": negative_text, "control_net": cn, "image": image,
                     "vae": vae})
    encoded = g.add("VAEEncode", 1, links={"pixels": image, "vae": vae}, title="Encode the input")
    return model, shifted, vae, pair, image, applied, encoded


def fluxir_workflow(g, key):
    heading, task, photo, prompt, metric = FLUXIR_TASKS[key]
    downscale = 4 if task == "sr" else 1
    model, shifted, vae, pair, image, applied, encoded = fluxir_chain(g, task, photo, prompt, downscale)
    sampled = trajir_sampling(g, 2, shifted, applied.out("positive"), applied.out("negative"), encoded, 21)
    restored = g.add("VAEDecode", 3, links={"samples": sampled, "vae": vae})
    g.add("SaveImage", 4, {"filename_prefix": f"trajir/fluxir_{task}"}, {"images": restored}, size=[420, 360])
    show(g, 4, image, restored)
    scores(g, 3, image, restored, metric, f"{metric.upper()} (no reference): 0 = input, 1 = restored")
    g.note(5, f"""## FLUX-IR (needs training) - {heading}

The paper's chain: FLUX.1-dev with the FLUX-IR ControlNet (strength 0.85, FLUX guidance 4, the task prompt
"{prompt}"), sampled on FLUX-IR's 21-step grid (shift 0.4675).

{FLUXIR_TRAINING}

{SAMPLING_NOTE.format(start=1, steps=21)} Set eta to 0 for the paper's deterministic sampler; cfg above 1
enables true CFG with the empty negative prompt (the paper uses 4 from step 5 on; it doubles the cost).

{files_note("flux1-dev.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors")}
- `models/controlnet/{FLUXIR_CONTROLNET}` (trained with `python -m trajir.train`)

**Licence:** {LICENCE_DEV}""")


def build_fluxir(key):
    return lambda g: fluxir_workflow(g, key)


def build_fluxir_best_of_n(g):
    model, shifted, vae, pair, image, applied, encoded = fluxir_chain(g, "deblur", "rocket",
                                                                      "sharp, deblurred, clear", 1)
    sched = g.add("BasicScheduler", 2, {"scheduler": "simple", "steps": 21, "denoise": 1.0}, {"model": shifted})
    start = g.add("TrajIRLQInitialState", 2, {"start_mode": "step", "start_step": 1},
                  {"model": shifted, "lq_latent": encoded, "sigmas": sched})
    guider = g.add("TrajIRNegativeLQGuidance", 2, {"cfg": 1.0, "w": 0.05},
                   {"model": shifted, "positive": applied.out("positive"), "negative": applied.out("negative"),
                    "lq_latent": encoded})
    noise = g.add("RandomNoise", 2, {"noise_seed": 42})
    reward = g.add("TrajIRRewardScorer", 2, {"metric": "psnr", "weights": ""},
                   {"images": pair.out("lq"), "reference": pair.out("gt")},
                   title="Reward: PSNR against the ground truth; the node shows the input's", size=[340, 260])
    best = g.add("TrajIRBestOfN", 3, {"candidates": 4, "mode": "single_step", "branch_step": 5, "eta": 1.0,
                                      "eta_mode": "random", "batch_size": 2, "save_branch": True,
                                      "filename": "trajir/branches/branch", "branch_at": "fraction",
                                      "branch_fraction": 0.25},
                 {"guider": guider, "noise": noise, "sigmas": start.out("sigmas"),
                  "latent_image": start.out("latent"), "vae": vae, "reward": reward.out("reward"),
                  "reference": pair.out("gt")})
    g.add("SaveImage", 4, {"filename_prefix": "trajir/fluxir_best_of_n"}, {"images": best.out("best_image")},
          title="Best candidate", size=[420, 360])
    g.add("PreviewImage", 4, links={"images": best.out("candidates")}, title="All candidates (ODE first)",
          size=[420, 360])
    g.add("PreviewAny", 3, links={"source": best.out("scores")}, title="Reward per candidate (* = best)",
          size=[360, 260])
    g.note(5, f"""## FLUX-IR (needs training) - Best-of-N alignment

Algorithm 1's sampling step: the ODE trajectory and 4 M-SDE branches (one M-SDE step a quarter of the way through
the schedule, then ODE; eta^2 uniform in [0, 1)) of the FLUX-IR motion-deblur chain, decoded and scored against
the bundled photo's ground truth (PSNR, the task-specific reward); ties go to the ODE. With `save_branch` the
best branch is written to `output/trajir/branches/` for `python -m trajir.train` (`run.stage=rl`,
`rl.records=ComfyUI/output/trajir/branches`); a counter is added, nothing is overwritten. For the unified
reward set the scorer's metric to `fluxir-unified` (its weights go in `models/iqa/`, see the README).

{FLUXIR_TRAINING}

{files_note("flux1-dev.safetensors", "clip_l.safetensors", "t5xxl_fp16.safetensors", "ae.safetensors")}
- `models/controlnet/{FLUXIR_CONTROLNET}` (trained with `python -m trajir.train`)

**Licence:** {LICENCE_DEV}""")


# ---- the catalogue: file name (= the template's title) -> description, thumbnail, builder -------------------------

ZERO_DOWNLOAD, PUBLIC_FLUX, FLUXIR = "zero-download", "public FLUX", "FLUX-IR ControlNet"
CATALOGUE = [
    # (file stem = title, kind, one-line description, (thumbnail task, photo), builder)
    ("Low light - compact restorer (no download)", ZERO_DOWNLOAD,
     "Runs on a CPU in seconds; PSNR and SSIM shown on the node.",
     ("lowlight", "coffee"), build_lowlight_compact),
    ("Underwater - compact restorer (no download)", ZERO_DOWNLOAD,
     "Runs on a CPU in seconds; PSNR, SSIM, UCIQE on the node.",
     ("underwater", "chelsea"), build_underwater_compact),
    ("Evaluate a restorer - PSNR, SSIM, NIQE", ZERO_DOWNLOAD,
     "Degrade a bundled photo, restore it, score it against GT.",
     ("lowlight", "chelsea"), build_evaluate),
    ("Super-resolution x4 - FLUX.1-dev upscaler", PUBLIC_FLUX,
     "jasperai Upscaler ControlNet; output capped at 1 MP.",
     ("sr", "astronaut"), build_sr),
    ("Motion deblur - FLUX.1-dev Union ControlNet", PUBLIC_FLUX,
     "Union-Pro ControlNet in blur mode; NIQE on the node.",
     ("deblur", "rocket"), build_deblur),
    ("JPEG artifacts - FLUX.1-dev Union ControlNet", PUBLIC_FLUX,
     "Union-Pro ControlNet in low-quality mode; NIQE shown.",
     ("jpeg", "coffee"), build_jpeg),
    ("Denoise - FLUX.1-dev Union ControlNet", PUBLIC_FLUX,
     "Union-Pro ControlNet in low-quality mode; NIQE shown.",
     ("denoise", "chelsea"), build_denoise),
    ("Derain - FLUX.1 Kontext dev", PUBLIC_FLUX,
     "Removes rain streaks by instruction; NIQE on the node.",
     ("derain", "rocket"), build_kontext("derain", "Derain", "adds rain streaks to a bundled photo")),
    ("Raindrops - FLUX.1 Kontext dev", PUBLIC_FLUX,
     "Removes raindrops on the lens by instruction; NIQE.",
     ("raindrop", "coffee"), build_kontext("raindrop", "Raindrops", "puts raindrops on the lens of a bundled photo")),
    ("Desnow - FLUX.1 Kontext dev", PUBLIC_FLUX,
     "Removes falling snow by instruction; NIQE on the node.",
     ("desnow", "astronaut"), build_kontext("desnow", "Desnow", "adds falling snow to a bundled photo")),
    ("Low light - FLUX.1 Kontext dev", PUBLIC_FLUX,
     "Brightens a dark photo by instruction; NIQE on the node.",
     ("lowlight", "chelsea"), build_kontext("lowlight", "Low light", "darkens a bundled photo and adds sensor noise")),
    ("Underwater - FLUX.1 Kontext dev", PUBLIC_FLUX,
     "Restores underwater colours by instruction; UCIQE.",
     ("underwater", "coffee"), build_kontext("underwater", "Underwater", "gives a bundled photo an underwater look")),
    ("Dehaze - FLUX.1 Kontext dev", PUBLIC_FLUX,
     "Removes haze by instruction; NIQE on the node.",
     ("dehaze", "rocket"), build_kontext("dehaze", "Dehaze", "adds depth-dependent haze to a bundled photo")),
    ("Best-of-N super-resolution - FLUX.1-dev", PUBLIC_FLUX,
     "ODE + 4 M-SDE branches, best by NIQE; branch saved.",
     ("sr", "chelsea"), build_best_of_n_sr),
] + [
    (f"FLUX-IR (needs training) - {key}", FLUXIR,
     "Needs a FLUX-IR ControlNet trained with trajir.train.",
     (FLUXIR_TASKS[key][1], FLUXIR_TASKS[key][2]), build_fluxir(key))
    for key in FLUXIR_TASKS
] + [
    ("FLUX-IR (needs training) - Best-of-N alignment", FLUXIR,
     "Needs a trained FLUX-IR ControlNet; saves RL records.",
     ("deblur", "chelsea"), build_fluxir_best_of_n),
]


def build_all():
    """``{path: text}`` of every file this script writes."""
    defs = definitions()
    out = {}
    for stem, _, _, _, builder in CATALOGUE:
        g = Graph(stem, defs)
        builder(g)
        out[HERE / f"{stem}.json"] = json.dumps(g.to_json(), indent=1, ensure_ascii=False) + "\n"
    out[DESCRIPTIONS] = json.dumps({stem: text for stem, _, text, _, _ in CATALOGUE}, indent=1,
                                   ensure_ascii=False) + "\n"
    return out


def main(argv=None):
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--check", action="store_true", help="report files that differ, write nothing")
    args = parser.parse_args(argv)
    files = build_all()
    stale = [p for p, text in files.items() if not p.is_file() or p.read_text() != text]
    shipped = {p for p in HERE.glob("*.json")}
    extra = sorted(shipped - set(files))
    if args.check:
        for p in stale:
            print(f"out of date: {p.relative_to(REPO)}")
        for p in extra:
            print(f"not in the catalogue: {p.relative_to(REPO)}")
        return 1 if stale or extra else 0
    for p in extra:
        p.unlink()
        p.with_suffix(".jpg").unlink(missing_ok=True)
        print(f"removed {p.relative_to(REPO)}")
    for p in stale:
        tmp = p.with_name(p.name + ".tmp")
        tmp.write_text(files[p])
        tmp.replace(p)
        print(f"wrote {p.relative_to(REPO)}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
