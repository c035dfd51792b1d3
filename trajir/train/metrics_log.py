"""Training logs: JSON lines always, tqdm on the console, tensorboard when it is installed. Rank 0 only."""
import json
import math
import os

from tqdm.auto import tqdm

from ..safefiles import write_text


class MetricsLog:
    def __init__(self, out_dir, total_steps, start_step=0, enabled=True):
        self.enabled = enabled
        self.path = os.path.join(out_dir, "metrics.jsonl")
        self.bar = tqdm(total=total_steps, initial=start_step, disable=not enabled, dynamic_ncols=True,
                        desc="train")
        self.tensorboard = None
        if not enabled:
            return
        os.makedirs(out_dir, exist_ok=True)
        _drop_entries_after(self.path, start_step)
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:  # tensorboard is optional
            SummaryWriter = None
        if SummaryWriter is not None:
            self.tensorboard = SummaryWriter(os.path.join(out_dir, "tensorboard"), purge_step=start_step + 1)

    def log(self, step, values):
        """Record ``values`` (name -> float) for ``step``."""
        if not self.enabled:
            return
        row = {"step": step, **{k: float(v) for k, v in values.items()}}
        with open(self.path, "a") as f:
            f.write(json.dumps(row) + "\n")
        if self.tensorboard is not None:
            for k, v in values.items():
                if math.isfinite(float(v)):
                    self.tensorboard.add_scalar(k, float(v), step)
        shown = {k: f"{float(v):.4g}" for k, v in values.items() if not k.startswith("val/")}
        self.bar.set_postfix(shown, refresh=False)

    def advance(self, n=1):
        self.bar.update(n)

    def message(self, text):
        if self.enabled:
            self.bar.write(text)

    def close(self):
        self.bar.close()
        if self.tensorboard is not None:
            self.tensorboard.close()


def _drop_entries_after(path, step):
    """On resume, forget log rows written after the checkpoint (they will be written again)."""
    if not os.path.isfile(path):
        return
    with open(path) as f:
        rows = [line for line in f if line.strip() and json.loads(line)["step"] <= step]
    write_text(path, "".join(rows))


def read_metrics(path):
    with open(path) as f:
        return [json.loads(line) for line in f if line.strip()]
