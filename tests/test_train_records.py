"""rl.records: Eq. (15) from Best-of-N branch records saved in ComfyUI (trajir.best_of_n), on a tiny FLUX."""
import pytest
import torch

from test_train_flux import flux_config
from trajir.best_of_n import save_branch
from trajir.models import FluxParams
from trajir.train.distributed import DistEnv
from trajir.train.loop import build_stage, train
from trajir.train.metrics_log import read_metrics


def write_records(folder, files=2, winners=True, conditioning=True, hint_size=16):
    p = FluxParams.tiny()
    g = torch.Generator().manual_seed(0)
    for i in range(files):
        cond = {"hint": torch.rand(2, 3, hint_size, hint_size, generator=g),
                "context": torch.randn(2, 3, p.context_in_dim, generator=g),
                "pooled": torch.randn(2, p.vec_in_dim, generator=g), "guidance": torch.full((2,), 4.0)}
        save_branch(folder / f"branch_{i}.safetensors", torch.randn(2, 16, 4, 4, generator=g),
                    torch.randn(2, 16, 4, 4, generator=g), torch.full((2,), 0.8), torch.full((2,), 0.7),
                    torch.tensor([0.6, 0.5]), eta=torch.tensor([0.7 if winners else 0.0, 0.0]),
                    conditioning=cond if conditioning else None)


def test_records_train_the_controlnet_step_onto_the_winning_branch(tmp_path):
    write_records(tmp_path / "records")
    cfg = flux_config(tmp_path / "run", "run.stage=rl", f"rl.records={tmp_path / 'records'}", "run.batch_size=2",
                      "optim.lr=3e-3", "run.max_steps=12", "run.save_every=6")
    restorer, stage = build_stage(cfg, DistEnv())
    assert [r[1] for r in stage.rows] == [0, 0]  # only the rows whose branch beat the ODE
    batch = stage.next_batch(None)
    assert batch["x_t"].shape == (2, 16, 4, 4) and batch["hint"].shape == (2, 3, 16, 16)
    assert train(cfg) == "done"
    losses = [r["rl_loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")]
    assert len(losses) == 12 and sum(losses[-3:]) < sum(losses[:3])
    # resumable like every stage: the record order is part of the checkpoint
    again = flux_config(tmp_path / "run", "run.stage=rl", f"rl.records={tmp_path / 'records'}", "run.batch_size=2",
                        "optim.lr=3e-3", "run.max_steps=12", "run.save_every=6")
    assert train(again, resume=str(tmp_path / "run" / "checkpoints" / "step_00000006")) == "done"
    assert [r["rl_loss"] for r in read_metrics(tmp_path / "run" / "metrics.jsonl")] == losses


def test_records_bad_input(tmp_path):
    env = DistEnv()
    with pytest.raises(ValueError, match="is not a folder"):
        build_stage(flux_config(tmp_path, "run.stage=rl", f"rl.records={tmp_path / 'nowhere'}"), env)
    write_records(tmp_path / "ode", files=1, winners=False)
    with pytest.raises(ValueError, match="every eta is 0"):
        build_stage(flux_config(tmp_path, "run.stage=rl", f"rl.records={tmp_path / 'ode'}"), env)
    write_records(tmp_path / "bare", files=1, conditioning=False)
    with pytest.raises(ValueError, match=r"branch_0.safetensors: a FLUX-IR record needs .* lacks \['hint'"):
        build_stage(flux_config(tmp_path, "run.stage=rl", f"rl.records={tmp_path / 'bare'}"), env)
    with pytest.raises(ValueError, match="rl.records trains a FLUX-IR ControlNet"):
        from test_train_framework import tiny_config
        build_stage(tiny_config(tmp_path, "run.stage=rl", f"rl.records={tmp_path / 'records'}"), env)
