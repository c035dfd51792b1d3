"""The LQ encoder ``E_LQ``: a copy of the autoencoder's encoder, fine-tuned so that ``E_LQ(y)`` approaches
``E(x_gt)`` (docs/equations.md §11, the paper's "low-quality encoder"). Its latent is the interpolation anchor of the
LQ-initialised starting state, Eq. (17).

File layout: the ``encoder.*`` keys of ``ae.safetensors`` and nothing else, so the weights can also be
dropped into an autoencoder file.
"""
import torch.nn.functional as F
from torch import Tensor, nn

from ..checks import compute_dtype, require_same_shape, require_tensor
from .autoencoder import AutoEncoder, AutoEncoderParams, Encoder, check_pixels, posterior
from .layers import finite, init_weights_


class LQEncoder(nn.Module):
    """Images in 0..1 -> model-space latent ``(mean - shift) * scale``, like ``AutoEncoder.encode``."""

    kind = "lq_encoder"

    def __init__(self, params: AutoEncoderParams, seed: int = 0):
        super().__init__()
        if not isinstance(params, AutoEncoderParams):
            raise ValueError(f"params must be an AutoEncoderParams, got {type(params).__name__}")
        self.params = params
        self.encoder = Encoder(params)
        init_weights_(self, seed)

    @property
    def config(self) -> AutoEncoderParams:
        return self.params

    @classmethod
    def from_autoencoder(cls, ae: AutoEncoder) -> "LQEncoder":
        """Start from the autoencoder's encoder: before fine-tuning ``E_LQ(y) == ae.encode(y)`` exactly."""
        if not isinstance(ae, AutoEncoder):
            raise ValueError(f"ae must be a trajir AutoEncoder, got {type(ae).__name__}")
        ref = ae.encoder.conv_in.weight
        net = cls(ae.params).to(device=ref.device, dtype=ref.dtype)
        net.encoder.load_state_dict(ae.encoder.state_dict())
        return net

    def forward(self, images: Tensor) -> Tensor:
        """``[B, 3, H, W]`` in 0..1 -> ``[B, 16, H/8, W/8]`` model-space latent (posterior mean)."""
        check_pixels("images", images, self.params.in_channels, self.params.downscale)
        dtype = self.encoder.conv_in.weight.dtype
        z = posterior(self.encoder(images.to(dtype) * 2.0 - 1.0)).to(images.dtype)
        return (z - self.params.shift_factor) * self.params.scale_factor


def lq_alignment_loss(lq_latent: Tensor, gt_latent: Tensor) -> Tensor:
    """``mean ||E_LQ(y) - E(x_gt)||^2`` over all latent elements (our reading, docs/equations.md §10).

    Both latents in the same (model) space; the target is detached so only the LQ encoder learns.
    Returned in float32 (float64 stays float64).
    """
    require_tensor("lq_latent", lq_latent)
    require_tensor("gt_latent", gt_latent)
    require_same_shape("lq_latent", lq_latent, "gt_latent", gt_latent)
    finite("gt_latent", gt_latent)
    dtype = compute_dtype(lq_latent, gt_latent)
    return F.mse_loss(lq_latent.to(dtype), gt_latent.detach().to(dtype))
