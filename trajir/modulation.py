"""The modulation network (docs/equations.md §5): ``eta = eta_max * sigmoid(MLP([error, embed(t)]))``.

It chooses how much stochasticity (eta) the M-SDE injects at a branch step, from the reconstruction error of the
clean estimate there and the time. The error enters as ``log(error + 1e-8)`` because MSEs of restorations span
several orders of magnitude and a raw MSE near 0 would leave the first layer blind to it.
"""
import json
import math
from dataclasses import asdict, dataclass

import torch
from torch import nn

from .safefiles import read_tagged, write_tagged

KIND = "modulation_mlp"


@dataclass
class ModulationConfig:
    hidden: int = 64
    layers: int = 2
    time_dim: int = 16
    eta_max: float = 1.0
    eta_init: float = 0.5  # eta of the untrained network, for any input

    def __post_init__(self):
        if self.hidden < 1 or self.layers < 1 or self.time_dim < 2 or self.time_dim % 2:
            raise ValueError(f"hidden ({self.hidden}) and layers ({self.layers}) must be >= 1 and time_dim "
                             f"({self.time_dim}) an even number >= 2")
        if not (self.eta_max > 0 and 0 < self.eta_init < self.eta_max):
            raise ValueError(f"need eta_max > 0 and 0 < eta_init < eta_max, got eta_max={self.eta_max}, "
                             f"eta_init={self.eta_init}")


def time_embedding(t, dim):
    """Sinusoidal features of ``t`` in [0, 1]: ``[B] -> [B, dim]``."""
    freqs = torch.exp(torch.arange(dim // 2, device=t.device, dtype=torch.float32) * (math.log(1000.0) / (dim // 2)))
    angles = t.float()[:, None] * freqs[None] * math.pi
    return torch.cat([angles.sin(), angles.cos()], dim=1)


class ModulationMLP(nn.Module):
    """``forward(error [B], t [B]) -> eta [B]`` in (0, eta_max)."""

    def __init__(self, config=None):
        super().__init__()
        self.config = config or ModulationConfig()
        c = self.config
        dims = [1 + c.time_dim] + [c.hidden] * c.layers
        blocks = []
        for a, b in zip(dims, dims[1:]):
            blocks += [nn.Linear(a, b), nn.SiLU()]
        self.body = nn.Sequential(*blocks)
        self.head = nn.Linear(c.hidden, 1)
        # start from eta_init everywhere: zero weights, bias at the matching logit
        nn.init.zeros_(self.head.weight)
        p = c.eta_init / c.eta_max
        nn.init.constant_(self.head.bias, math.log(p / (1 - p)))

    def forward(self, error, t):
        if error.shape != t.shape or error.ndim != 1:
            raise ValueError(f"error and t must both be [B] tensors, got shapes {tuple(error.shape)} and "
                             f"{tuple(t.shape)}")
        features = torch.cat([torch.log(error.float().clamp_min(0) + 1e-8)[:, None],
                              time_embedding(t, self.config.time_dim)], dim=1)
        return self.config.eta_max * torch.sigmoid(self.head(self.body(features))[:, 0])

    def save(self, path):
        """Write weights and config as a tagged safetensors file (atomically; an existing file is replaced)."""
        return write_tagged(path, self.state_dict(), KIND, {"config": asdict(self.config)}, overwrite=True)

    @classmethod
    def load(cls, path):
        tensors, meta = read_tagged(path, KIND)
        model = cls(ModulationConfig(**json.loads(meta["config"])))
        try:
            model.load_state_dict(tensors)
        except RuntimeError as e:
            raise ValueError(f"{path}: weights do not match the stored config: {e}") from e
        return model
