"""TrajIR Scale (Pixel Cap): scales an image for a diffusion pass without ever exceeding a pixel budget
(``trajir.data.transforms.capped_size``), so a x4 upscale of a large photo does not become a 100-megapixel FLUX
run. The resize itself is ComfyUI's (``comfy.utils.common_upscale``)."""
from ..trajir.checks import require_finite
from ..trajir.data.transforms import capped_size
from .comfy_bridge import bchw_to_image, image_to_bchw

UPSCALE_METHODS = ("lanczos", "bicubic", "bilinear", "area", "nearest-exact")


class TrajIRScaleWithCap:
    """Resizes by a factor, shrinking the factor when the result would exceed max_megapixels."""

    DESCRIPTION = ("Scale an image by scale_by, capped at max_megapixels (1.0 = 1024 x 1024, FLUX's native size; "
                   "the factor shrinks when the result would be larger), sides rounded down to multiples of 16.")
    CATEGORY = "TrajIR/data"
    RETURN_TYPES = ("IMAGE",)
    RETURN_NAMES = ("image",)
    OUTPUT_TOOLTIPS = ("The scaled image, at most max_megapixels.",)
    FUNCTION = "scale"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {
            "image": ("IMAGE", {"tooltip": "The image to scale."}),
            "scale_by": ("FLOAT", {"default": 4.0, "min": 0.05, "max": 16.0, "step": 0.05,
                                   "tooltip": "The scale factor (4 for a x4 super-resolution)."}),
            "max_megapixels": ("FLOAT", {"default": 1.0, "min": 0.001, "max": 16.0, "step": 0.05,
                                         "tooltip": "Most pixels of the output, in units of 1024 x 1024."}),
            "upscale_method": (list(UPSCALE_METHODS), {"default": "lanczos",
                               "tooltip": "The resampling filter (ComfyUI's)."}),
        }}

    def scale(self, image, scale_by, max_megapixels, upscale_method):
        import comfy.utils

        if upscale_method not in UPSCALE_METHODS:
            raise ValueError(f"upscale_method must be one of {UPSCALE_METHODS}, got {upscale_method!r}")
        x = require_finite("image", image_to_bchw("image", image))  # resampling would smear a NaN over its window
        h, w = x.shape[-2:]
        out_h, out_w = capped_size(int(h), int(w), float(scale_by), float(max_megapixels))
        out = comfy.utils.common_upscale(x, out_w, out_h, upscale_method, "disabled").clamp(0, 1)
        return (bchw_to_image(out),)
