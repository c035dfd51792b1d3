"""Test-only ComfyUI nodes standing in for multi-GB files: a tiny random FLUX (built in-process,
docs/comfyui.md §8), a zero FLUX text conditioning (docs/comfyui.md §2) and a tiny 16-channel TAESD-layout VAE; and a
tiny Qwen-Image (5-D video-VAE latents) for the in-process checks. Used by the real-ComfyUI tests, in-process through
``build_*`` and in the server test as a single-file custom node (linked into a temporary ``custom_nodes``). Imports
ComfyUI only inside functions; pytest never collects it."""
import torch


def build_tiny_flux(seed=0, hidden_size=64, num_heads=2, context_dim=4096, pooled_dim=768):
    """A FLUX-dev-architecture ModelPatcher (1 double + 1 single block, random weights) without any file."""
    import comfy.model_detection
    import comfy.model_management as mm
    import comfy.model_patcher

    pe_dim = hidden_size // num_heads
    b = (pe_dim - (pe_dim // 4) // 2 * 2) // 2 // 2 * 2
    config = {"image_model": "flux", "in_channels": 16, "patch_size": 2, "out_channels": 16,
              "vec_in_dim": pooled_dim, "context_in_dim": context_dim, "hidden_size": hidden_size, "mlp_ratio": 4.0,
              "num_heads": num_heads, "depth": 1, "depth_single_blocks": 1, "axes_dim": [pe_dim - 2 * b, b, b],
              "theta": 10000, "qkv_bias": True, "guidance_embed": True}
    model_config = comfy.model_detection.model_config_from_unet_config(config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, "")
    generator = torch.Generator().manual_seed(seed)
    state = {}
    for key, value in model.diffusion_model.state_dict().items():
        if key.endswith(".scale"):
            state[key] = torch.ones(value.shape)
        elif key.endswith(".bias"):
            state[key] = torch.zeros(value.shape)
        else:
            state[key] = torch.randn(value.shape, generator=generator) * 0.05
    model.diffusion_model.load_state_dict(state, strict=True)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def _randomised(module, generator):
    """A state dict for ``module`` with random weights (norm scales 1, biases 0): ComfyUI skips initialisation."""
    state = {}
    for key, value in module.state_dict().items():
        if key.endswith(".scale") or (key.endswith(".weight") and value.ndim == 1):
            state[key] = torch.ones(value.shape)
        elif key.endswith(".bias"):
            state[key] = torch.zeros(value.shape)
        else:
            state[key] = torch.randn(value.shape, generator=generator) * 0.05
    return state


def build_tiny_qwen_image(seed=0, text_dim=64):
    """A Qwen-Image-architecture ModelPatcher (one block, width 32, random weights): rectified flow on the Wan 2.1
    latent format, whose latents are 5-D ``[B, 16, T, h, w]``. Its conditioning is ``[1, tokens, text_dim]``."""
    import comfy.model_detection
    import comfy.model_management as mm
    import comfy.model_patcher

    config = {"image_model": "qwen_image", "patch_size": 2, "in_channels": 64, "out_channels": 16, "num_layers": 1,
              "attention_head_dim": 16, "num_attention_heads": 2, "joint_attention_dim": text_dim,
              "axes_dims_rope": (4, 6, 6)}
    model_config = comfy.model_detection.model_config_from_unet_config(config)
    model_config.set_inference_dtype(torch.float32, None)
    model = model_config.get_model({}, "")
    model.diffusion_model.load_state_dict(_randomised(model.diffusion_model, torch.Generator().manual_seed(seed)),
                                          strict=True)
    return comfy.model_patcher.ModelPatcher(model, load_device=mm.get_torch_device(),
                                            offload_device=mm.unet_offload_device())


def build_tiny_vae(seed=0):
    """A ComfyUI VAE in the TAESD layout with 16 latent channels (FLUX's), random weights, 8x down/upscale."""
    import comfy.sd
    import comfy.taesd.taesd

    generator = torch.Generator().manual_seed(seed)
    state = {}
    # ComfyUI's layers skip weight initialisation, so every tensor is set here
    for key, value in comfy.taesd.taesd.TAESD(latent_channels=16).state_dict().items():
        if key == "vae_scale":
            state[key] = torch.ones(())
        elif value.ndim > 1:
            fan_in = value[0].numel()
            state[key] = torch.randn(value.shape, generator=generator) / fan_in ** 0.5
        else:
            state[key] = torch.zeros(value.shape)
    return comfy.sd.VAE(sd=state)


def zero_flux_conditioning(tokens=4, guidance=3.5):
    """A FLUX CONDITIONING of zeros: T5 tokens [1, tokens, 4096] and a pooled CLIP-L vector [1, 768]."""
    return [[torch.zeros(1, tokens, 4096), {"pooled_output": torch.zeros(1, 768), "guidance": guidance}]]


class TrajIRTestTinyFlux:
    CATEGORY = "trajir_test"
    RETURN_TYPES = ("MODEL",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})}}

    def run(self, seed):
        return (build_tiny_flux(seed),)


class TrajIRTestTinyVAE:
    CATEGORY = "trajir_test"
    RETURN_TYPES = ("VAE",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"seed": ("INT", {"default": 0, "min": 0, "max": 2**31 - 1})}}

    def run(self, seed):
        return (build_tiny_vae(seed),)


class TrajIRTestFluxConditioning:
    CATEGORY = "trajir_test"
    RETURN_TYPES = ("CONDITIONING",)
    FUNCTION = "run"

    @classmethod
    def INPUT_TYPES(cls):
        return {"required": {"text": ("STRING", {"default": ""})}}

    def run(self, text):
        return (zero_flux_conditioning(),)


NODE_CLASS_MAPPINGS = {
    "TrajIRTestTinyFlux": TrajIRTestTinyFlux,
    "TrajIRTestTinyVAE": TrajIRTestTinyVAE,
    "TrajIRTestFluxConditioning": TrajIRTestFluxConditioning,
}
