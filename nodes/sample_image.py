"""TrajIR Sample Image: a bundled public-domain photo (or a connected image) as a ground truth and its seeded
synthetic degradation as the LQ input, so a workflow runs with nothing to download or copy (``trajir.data``)."""
from ..trajir.checks import require_finite
from ..trajir.data import TASKS
from ..trajir.data.samples import NO_DEGRADATION, load_sample, sample_names, sample_pair
from .comfy_bridge import bchw_to_image, image_to_bchw


class TrajIRSampleImage:
    """A degraded / clean image pair from a bundled photo, for trying restorers and measuring them."""

    DESCRIPTION = ("A bundled public-domain photo (or the connected image) as GT, and its seeded synthetic "
                   "degradation as LQ: low light, underwater, haze, rain, snow, blur, noise, x4 super-resolution. "
                   "Sides are cropped to multiples of 16.")
    CATEGORY = "TrajIR/data"
    RETURN_TYPES = ("IMAGE", "IMAGE")
    RETURN_NAMES = ("lq", "gt")
    OUTPUT_TOOLTIPS = ("The degraded image (at 1/downscale of the GT's size).",
                       "The clean image (the photo resized to size and cropped to multiples of 16).")
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        photos = sample_names()
        return {
            "required": {
                "photo": (photos, {"default": "coffee" if "coffee" in photos else photos[0],
                                   "tooltip": "A bundled photo (public domain / CC0). chelsea and coffee were held "
                                              "out of the shipped restorers' training."}),
                "task": ([NO_DEGRADATION] + list(TASKS), {"default": "lowlight",
                         "tooltip": "The synthetic degradation of the LQ (trajir.data); none returns the photo "
                                    "itself as LQ."}),
                "strength": ("FLOAT", {"default": 0.5, "min": 0.0, "max": 1.0, "step": 0.05,
                                       "tooltip": "0 = the mildest degradation of the task's training range, 1 = "
                                                  "the strongest."}),
                "seed": ("INT", {"default": 0, "min": 0, "max": 2**63 - 1,
                                 "tooltip": "Seed of the degradation's random parts (noise, streak positions)."}),
                "size": ("INT", {"default": 0, "min": 0, "max": 4096, "step": 16,
                                 "tooltip": "Longest side of the GT in pixels; 0 keeps the size (the bundled "
                                            "photos are 384 px)."}),
                "downscale": ("INT", {"default": 1, "min": 1, "max": 8,
                                      "tooltip": "Shrink the LQ this many times (4: the input of a x4 "
                                                 "super-resolution); 1 keeps it at the GT's size."}),
            },
            "optional": {
                "image": ("IMAGE", {"tooltip": "Your own image instead of the bundled photo (set task to none if it "
                                               "is already degraded)."}),
            },
        }

    def run(self, photo, task, strength, seed, size, downscale, image=None):
        clean = load_sample(photo) if image is None else require_finite("image", image_to_bchw("image", image))
        lq, gt = sample_pair(clean, task, strength, seed, size, downscale)
        return (bchw_to_image(lq), bchw_to_image(gt))
