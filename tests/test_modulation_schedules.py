"""ModulationMLP (docs/equations.md §5) and the time grids (docs/equations.md §11)."""
import math

import pytest
import torch

from trajir.modulation import ModulationConfig, ModulationMLP
from trajir.schedules import flux_mu, flux_schedule, linear_beta_alphas_bar, vp_grid


def test_modulation_starts_at_eta_init_and_stays_in_range():
    net = ModulationMLP(ModulationConfig(eta_max=0.8, eta_init=0.2))
    error, t = torch.rand(16) * 0.1, torch.rand(16)
    assert torch.allclose(net(error, t), torch.full((16,), 0.2), atol=1e-6)
    g = torch.Generator().manual_seed(0)
    with torch.no_grad():
        for p in net.parameters():
            p.copy_(torch.randn(p.shape, generator=g) * 0.2)
    eta = net(error, t)
    assert eta.shape == (16,) and bool((eta > 0).all()) and bool((eta < 0.8).all())
    assert eta.std() > 1e-3  # it depends on its inputs


def test_modulation_learns_a_target_eta():
    # the cross-entropy-method update of docs/equations.md §5: regress eta_phi towards the best branch's eta
    torch.manual_seed(0)
    net = ModulationMLP(ModulationConfig(eta_max=1.0, eta_init=0.5))
    opt = torch.optim.Adam(net.parameters(), lr=2e-2)
    t = torch.linspace(0.05, 0.95, 32)
    error = torch.full((32,), 0.01)
    target = 0.2 + 0.6 * t  # a time-dependent optimum
    for _ in range(150):
        loss = ((net(error, t) - target) ** 2).mean()
        opt.zero_grad()
        loss.backward()
        opt.step()
    assert loss.item() < 1e-3


def test_modulation_save_load_round_trip(tmp_path):
    net = ModulationMLP(ModulationConfig(hidden=8, layers=1, time_dim=4, eta_max=0.5, eta_init=0.1))
    with torch.no_grad():
        for p in net.parameters():
            p.normal_()
    path = tmp_path / "eta.safetensors"
    net.save(path)
    back = ModulationMLP.load(path)
    assert back.config == net.config
    e, t = torch.rand(5), torch.rand(5)
    assert torch.equal(back(e, t), net(e, t))


def test_modulation_bad_files_and_config(tmp_path):
    with pytest.raises(FileNotFoundError, match="missing.safetensors"):
        ModulationMLP.load(tmp_path / "missing.safetensors")
    junk = tmp_path / "junk.safetensors"
    junk.write_bytes(b"not a safetensors file at all")
    with pytest.raises(ValueError, match="junk.safetensors is not a readable safetensors file"):
        ModulationMLP.load(junk)
    with pytest.raises(ValueError, match="eta_init"):
        ModulationConfig(eta_max=0.5, eta_init=0.7)
    with pytest.raises(ValueError, match=r"error and t must both be \[B\]"):
        ModulationMLP()(torch.zeros(3), torch.zeros(4))


def test_flux_grid_of_the_fluxir_pipeline():
    # docs/equations.md §11: 21 steps, image_seq_len 64 -> mu 0.4675, grid 1.0, 0.96962, 0.93813, ..., 0.07390, 0
    assert flux_mu(64) == pytest.approx(0.4675, abs=1e-4)
    grid = flux_schedule(21, image_seq_len=64)
    expect = [1.0, 0.96962, 0.93813, 0.90545, 0.87151, 0.83626, 0.79960, 0.76145, 0.72172, 0.68031, 0.63710,
              0.59199, 0.54483, 0.49550, 0.44383, 0.38965, 0.33278, 0.27301, 0.21011, 0.14384, 0.07390, 0.0]
    assert grid.tolist() == pytest.approx(expect, abs=1e-5)
    assert flux_schedule(4).tolist() == pytest.approx([1.0, 0.75, 0.5, 0.25, 0.0])


def test_vp_grid_from_linear_betas():
    ab = linear_beta_alphas_bar(10, 1e-4, 0.99)
    assert ab[0].item() == pytest.approx(1 - 1e-4)
    assert ab[1].item() == pytest.approx((1 - 1e-4) * (1 - (1e-4 + (0.99 - 1e-4) / 9)))
    alphas, sigmas = vp_grid(ab)
    assert alphas.shape == (11,) and alphas[-1] == 1 and sigmas[-1] == 0
    assert torch.allclose(alphas ** 2 + sigmas ** 2, torch.ones(11, dtype=torch.float64))
    assert bool((sigmas[1:] / alphas[1:] < sigmas[:-1] / alphas[:-1]).all())
    with pytest.raises(ValueError, match="beta_start"):
        linear_beta_alphas_bar(10, 0.5, 0.1)
    assert math.isclose(alphas[0].item(), math.sqrt(ab[-1].item()))
