"""Exponential moving average of the trained weights, with the usual warm-up so short runs are not dominated by
the initial weights: ``decay_k = min(decay, (1 + k) / (10 + k))``."""
import copy

import torch


class EMA:
    def __init__(self, module, decay):
        self.decay = decay
        self.updates = 0
        self.shadow = {k: v.detach().clone().float() for k, v in module.state_dict().items()
                       if v.is_floating_point()}

    @torch.no_grad()
    def update(self, module):
        self.updates += 1
        d = min(self.decay, (1 + self.updates) / (10 + self.updates))
        for k, v in module.state_dict().items():
            if k in self.shadow:
                self.shadow[k].lerp_(v.detach().float(), 1 - d)

    def copy_of(self, module):
        """A copy of ``module`` holding the averaged weights."""
        out = copy.deepcopy(module)
        state = out.state_dict()
        out.load_state_dict({k: self.shadow[k].to(state[k].dtype) if k in self.shadow else v
                             for k, v in state.items()})
        return out

    def state_dict(self):
        return {"updates": self.updates, "shadow": dict(self.shadow)}

    def load_state_dict(self, state):
        self.updates = int(state["updates"])
        missing = set(self.shadow) - set(state["shadow"])
        if missing:
            raise ValueError(f"EMA state lacks {sorted(missing)[:5]}")
        self.shadow = {k: v.clone().float() for k, v in state["shadow"].items()}
