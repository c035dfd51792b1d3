"""What every training stage shares: the trained module (or its DDP wrapper), parameters, export, no extra state."""
import os

from ..models import save


class Stage:
    name = "stage"

    def __init__(self, cfg, restorer, env):
        self.cfg, self.restorer, self.env = cfg, restorer, env
        self.model = restorer.trainable()  # the loop replaces it by its DDP wrapper in distributed runs

    def prepare(self, train_set):
        """Work done once before the first step (e.g. the distillation step selection)."""

    def parameters(self):
        return [p for p in self.restorer.trainable().parameters() if p.requires_grad]

    def before_optimizer_step(self):
        pass

    def after_step(self, step):
        pass

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass

    def export(self, net, cfg):
        """Write the trained weights where their consumer loads them, with the sampling recipe; return the path."""
        name = cfg["run.export"] or f"{self.restorer.kind}_{self.name.replace('+', '_')}.safetensors"
        path = os.path.join(cfg["run.out_dir"], name)
        return save(net, path, metadata={"trajir_recipe": self.recipe().to_json()})
