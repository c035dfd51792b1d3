"""What every training stage shares: the trained module (or its DDP wrapper), parameters, validation, export,
no extra state."""
import os

from ..models import save
from .validate import evaluate, validate


class Stage:
    name = "stage"

    def __init__(self, cfg, restorer, env):
        self.cfg, self.restorer, self.env = cfg, restorer, env
        self.model = restorer.trainable()  # the loop replaces it by its DDP wrapper in distributed runs

    def prepare(self, train_set):
        """Work done once before the first step (e.g. the distillation step selection)."""

    def next_batch(self, loader):
        """The next training batch (stages with their own data override this)."""
        return loader.next_batch()

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

    def validate(self, net, datasets, step):
        """Held-out metrics ``{"val/<metric>": value}`` of ``net`` (``validate.validate``); called on every rank.

        Rank 0 scores and writes the grid; the others return ``{}``. When the restorer's forward passes are
        collectives (a base sharded with FSDP), the other ranks run the same passes and drop the result.
        """
        if self.env.is_main:
            return validate(self.restorer, net, self.recipe(), datasets, self.cfg, step)
        if getattr(self.restorer, "collective", False):
            evaluate(self.restorer, net, self.recipe(), datasets, [], self.cfg["val.batch_size"], self.cfg["val.draws"])
        return {}

    def export(self, net, cfg):
        """Write the trained weights where their consumer loads them, with the sampling recipe; return the path.

        The file name is ``run.export``, else the restorer's ``export_name`` (the name its consumers load), else
        ``<kind>_<stage>.safetensors``.
        """
        name = (cfg["run.export"] or getattr(self.restorer, "export_name", "")
                or f"{self.restorer.kind}_{self.name.replace('+', '_')}.safetensors")
        path = os.path.join(cfg["run.out_dir"], name)
        return save(net, path, metadata={"trajir_recipe": self.recipe().to_json()})
