"""Branch records and prompt-embedding files: round trips, refusing overwrites, errors naming the file."""
import pytest
import torch

from trajir.best_of_n import load_branch, save_branch
from trajir.conditioning import load_conditioning, save_conditioning, zero_conditioning


def test_branch_round_trip_and_no_silent_overwrite(tmp_path):
    g = torch.Generator().manual_seed(0)
    x_t, x_next = torch.randn(2, 16, 4, 4, generator=g), torch.randn(2, 16, 4, 4, generator=g)
    t, t_next, reward = torch.tensor([0.8, 0.8]), torch.tensor([0.7, 0.7]), torch.tensor([0.5, 0.25])
    path = tmp_path / "branch.safetensors"
    save_branch(path, x_t, x_next, t, t_next, reward, extra={"seed": 3})
    back = load_branch(path)
    assert torch.equal(back["x_t"], x_t) and torch.equal(back["x_next"], x_next)
    assert torch.equal(back["reward"], reward) and back["param"] == "rf"
    with pytest.raises(FileExistsError, match="branch.safetensors exists already"):
        save_branch(path, x_t, x_next, t, t_next, reward)
    save_branch(path, x_next, x_t, t, t_next, reward, overwrite=True)
    assert torch.equal(load_branch(path)["x_t"], x_next)
    assert [p.name for p in tmp_path.iterdir()] == ["branch.safetensors"]  # no temp files left


def test_branch_bad_input(tmp_path):
    x = torch.zeros(2, 4, 2, 2)
    with pytest.raises(ValueError, match=r"reward must have shape \(2,\)"):
        save_branch(tmp_path / "b.safetensors", x, x, torch.zeros(2), torch.zeros(2), torch.zeros(3))
    cond = tmp_path / "c.safetensors"
    save_conditioning(cond, torch.zeros(4, 8), torch.zeros(6))
    with pytest.raises(ValueError, match="holds 'flux_conditioning', expected a TrajIR 'best_of_n_branch'"):
        load_branch(cond)
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"\x00" * 20)
    with pytest.raises(ValueError, match="junk.safetensors is not a readable safetensors file"):
        load_branch(junk)
    with pytest.raises(FileNotFoundError, match="nothing.safetensors"):
        load_branch(tmp_path / "nothing.safetensors")


def test_conditioning_round_trip(tmp_path):
    g = torch.Generator().manual_seed(1)
    context, pooled = torch.randn(1, 5, 4096, generator=g), torch.randn(1, 768, generator=g)
    path = save_conditioning(tmp_path / "sr.safetensors", context, pooled, guidance=4.0,
                             prompt="high-resolution, ultra-sharp, detailed")
    back = load_conditioning(path)
    assert torch.equal(back["context"], context[0]) and torch.equal(back["pooled"], pooled[0])
    assert back["guidance"] == 4.0 and back["prompt"] == "high-resolution, ultra-sharp, detailed"
    zero = zero_conditioning()
    assert zero["context"].shape == (1, 4096) and not zero["pooled"].any()
    with pytest.raises(ValueError, match="context must be"):
        save_conditioning(tmp_path / "x.safetensors", torch.zeros(2, 3, 4, 5), torch.zeros(3))
