"""pyiqa metrics built only from local files: offline runs on random weights of the real layouts, folder
resolution, and errors that name the missing or broken file."""
import fractions
import os
import socket

import pytest
import torch

from trajir.rewards import available, learned, score
from trajir.rewards.learned import CorruptWeightsError, MissingWeightsError

needs_pyiqa = pytest.mark.skipif(not learned.pyiqa_installed(),
                                 reason="needs pyiqa, the optional 'iqa' extra (pip install 'pyiqa>=0.1.13')")
X = torch.rand(1, 3, 64, 64, generator=torch.Generator().manual_seed(0))


@pytest.fixture
def registered_dirs(monkeypatch):
    """A fresh folder registration, the previous one restored afterwards."""
    monkeypatch.setattr(learned, "_registered_dirs", [])


@pytest.fixture(scope="module")
def weights_dir(tmp_path_factory):
    """Random weights, produced from each architecture, saved under pyiqa's file names in pyiqa's formats."""
    if not learned.pyiqa_installed():
        pytest.skip("needs pyiqa, the optional 'iqa' extra (pip install 'pyiqa>=0.1.13')")
    import torchvision
    from pyiqa.archs.clip_model import CLIP
    from safetensors.torch import save_file

    folder = tmp_path_factory.mktemp("iqa")
    torch.manual_seed(0)
    lins = {k: v for k, v in learned.build_empty("lpips").net.state_dict().items() if k.startswith("lin")
            and not k.startswith("lins")}
    torch.save(lins, folder / "LPIPS_v0.1_alex-df73285e.pth")  # the LPIPS release holds only the linear layers
    torch.save(torchvision.models.alexnet(weights=None).state_dict(), folder / "alexnet-owt-7be5be79.pth")
    for metric, name in (("musiq", "musiq_koniq_ckpt-e95806b9.pth"), ("maniqa", "ckpt_koniq10k.pt")):
        state = learned.build_empty(metric).net.state_dict()
        torch.save({k: v.half() if v.is_floating_point() else v for k, v in state.items()}, folder / name)
    # a small CLIP with the ResNet layout of RN50 (build_model reads the sizes from the tensors)
    clip = CLIP(64, 224, (1, 1, 1, 1), 8, None, 77, 49408, 64, 1, 1)
    save_file({k: v.contiguous() for k, v in clip.state_dict().items()}, str(folder / "RN50.safetensors"))
    learned.clear_cache()
    return folder


@pytest.fixture
def offline(monkeypatch):
    def refuse(*args, **kwargs):
        raise OSError("network access attempted during an offline test")

    monkeypatch.setattr(socket.socket, "connect", refuse)
    monkeypatch.setattr(socket.socket, "connect_ex", refuse)


def test_learned_metrics_run_offline_from_local_files(weights_dir, offline):
    learned.clear_cache()
    assert set(available(iqa_dir=weights_dir)) >= {"lpips", "musiq", "maniqa"}
    low = X.bfloat16()
    for name, opts in (("musiq", {}), ("maniqa", {"crops": 1})):
        out = score(name, low, iqa_dir=weights_dir, **opts)
        assert out.dtype == torch.float32 and out.shape == (1,) and torch.isfinite(out).all(), name
    other = X.flip(-1)
    d = score("lpips", low, other.bfloat16(), iqa_dir=weights_dir)
    assert d.dtype == torch.float32 and d.item() > 0
    torch.testing.assert_close(d, score("lpips", low.float(), other.bfloat16().float(), iqa_dir=weights_dir))
    assert score("lpips", X, X, iqa_dir=weights_dir).item() == 0.0


def test_clipiqa_runs_offline_from_a_local_file(weights_dir, offline):
    if not learned.importable("clipiqa"):
        pytest.skip("pyiqa's CLIP-IQA does not import here (openai-clip needs setuptools<81 for pkg_resources)")
    assert "clipiqa" in available(iqa_dir=weights_dir)
    out = score("clipiqa", X.half(), iqa_dir=weights_dir)
    assert out.dtype == torch.float32 and out.shape == (1,) and 0 < out.item() < 1
    torch.testing.assert_close(out, score("clipiqa", X.half().float(), iqa_dir=weights_dir))


def test_lpips_trunk_may_come_with_the_lpips_file(weights_dir, tmp_path):
    # a single LPIPS file holding the AlexNet trunk too: no separate AlexNet file is needed, same result
    full = learned.load_model("lpips", weights_dir).net.state_dict()
    torch.save(full, tmp_path / "LPIPS_v0.1_alex-df73285e.pth")
    assert learned.has_weights("lpips", tmp_path)
    torch.testing.assert_close(score("lpips", X, X.flip(-1), iqa_dir=tmp_path),
                               score("lpips", X, X.flip(-1), iqa_dir=weights_dir))


@needs_pyiqa
def test_a_download_attempt_fails_and_names_the_file(monkeypatch, tmp_path, offline):
    import torchvision

    monkeypatch.setenv("TORCH_HOME", str(tmp_path))  # an empty hub cache: torchvision would have to download
    saved = torch.hub.download_url_to_file
    message = (r"a download of https://download\.pytorch\.org/models/alexnet-owt-7be5be79\.pth was attempted; "
               r"TrajIR never downloads: put alexnet-owt-7be5be79\.pth in an IQA weight folder")
    with pytest.raises(MissingWeightsError, match=message), learned.no_downloads():
        torchvision.models.alexnet(weights="IMAGENET1K_V1")
    assert torch.hub.download_url_to_file is saved


def test_missing_files_are_named_with_folder_and_source(tmp_path):
    with pytest.raises(MissingWeightsError, match=r"musiq needs the weight file 'musiq_koniq_ckpt-e95806b9\.pth', "
                                                  r"not found in .*; download it from https://huggingface\.co/"
                                                  r"chaofengc/IQA-PyTorch-Weights and put it in that folder"):
        score("musiq", X, iqa_dir=tmp_path)
    assert str(tmp_path) in _message(lambda: score("maniqa", X, iqa_dir=tmp_path))
    torch.save({"lin0.model.1.weight": torch.zeros(1, 64, 1, 1)}, tmp_path / "LPIPS_v0.1_alex-df73285e.pth")
    with pytest.raises(MissingWeightsError, match=r"lpips needs the weight file 'alexnet-owt-7be5be79\.pth', .*"
                                                  r"download\.pytorch\.org/models/alexnet-owt-7be5be79\.pth"):
        score("lpips", X, X, iqa_dir=tmp_path)
    assert not learned.has_weights("lpips", tmp_path)


def _message(fn):
    with pytest.raises(MissingWeightsError) as info:
        fn()
    return str(info.value)


def test_without_any_folder_the_error_says_where_to_put_files(monkeypatch, registered_dirs):
    monkeypatch.delenv("TRAJIR_IQA_DIR", raising=False)
    learned.set_default_iqa_dirs([])
    with pytest.raises(MissingWeightsError, match=r"no IQA weight folder is set \(pass iqa_dir, set \$TRAJIR_IQA_DIR, "
                                                  r"or in ComfyUI use ComfyUI/models/iqa/\)"):
        score("maniqa", X)


def test_folder_precedence(monkeypatch, tmp_path, registered_dirs):
    a, b, c, d = (tmp_path / n for n in "abcd")
    assert learned.set_default_iqa_dirs(str(a)) == [a]
    monkeypatch.setenv("TRAJIR_IQA_DIR", f"{b}{os.pathsep}{c}")
    assert learned.iqa_dirs() == [b, c]
    assert learned.iqa_dirs(d) == [d]
    monkeypatch.delenv("TRAJIR_IQA_DIR")
    assert learned.iqa_dirs() == [a]
    # the first folder holding the file wins
    c.mkdir()
    torch.save({}, c / "ckpt_koniq10k.pt")
    monkeypatch.setenv("TRAJIR_IQA_DIR", f"{b}{os.pathsep}{c}")
    assert learned.find_weight("maniqa", ("ckpt_koniq10k.pt",)) == c / "ckpt_koniq10k.pt"


def test_corrupt_files_are_named(tmp_path):
    path = tmp_path / "musiq_koniq_ckpt-e95806b9.pth"
    path.write_bytes(b"\x00garbage")
    with pytest.raises(CorruptWeightsError, match=r"weight file .*musiq_koniq_ckpt-e95806b9\.pth is corrupt or not "
                                                  r"a weights-only checkpoint"):
        score("musiq", X, iqa_dir=tmp_path)
    torch.save({"w": fractions.Fraction(1, 2)}, path)  # a pickle of an arbitrary object is never loaded
    with pytest.raises(CorruptWeightsError, match=r"is corrupt or not a weights-only checkpoint"):
        learned.read_state_dict(path)
    torch.save({"w": [1, 2]}, path)
    with pytest.raises(CorruptWeightsError, match=r"does not hold a state dict of tensors"):
        learned.read_state_dict(path)
    bad = tmp_path / "RN50.safetensors"
    bad.write_bytes(b"{}")
    with pytest.raises(CorruptWeightsError, match=r"RN50\.safetensors is corrupt"):
        learned.read_state_dict(bad)


def test_state_dict_wrappers_and_prefixes_are_removed(tmp_path):
    torch.save({"params": {"module.a": torch.ones(1)}}, tmp_path / "w.pth")
    assert list(learned.read_state_dict(tmp_path / "w.pth")) == ["a"]


@needs_pyiqa
def test_a_file_of_another_layout_is_refused(tmp_path):
    torch.save({"head.weight": torch.zeros(3, 3)}, tmp_path / "musiq_koniq_ckpt-e95806b9.pth")
    with pytest.raises(CorruptWeightsError, match=r"musiq_koniq_ckpt-e95806b9\.pth does not fit MUSIQ: \d+ missing .*"
                                                  r"0 unexpected .*1 of another shape \(e\.g\. \['head\.weight'\]\)"):
        score("musiq", X, iqa_dir=tmp_path)


@needs_pyiqa
def test_clip_torchscript_must_be_openais_file(tmp_path):
    if not learned.importable("clipiqa"):
        pytest.skip("pyiqa's CLIP-IQA does not import here (openai-clip needs setuptools<81 for pkg_resources)")
    (tmp_path / "RN50.pt").write_bytes(b"not the OpenAI archive")
    with pytest.raises(CorruptWeightsError, match=r"RN50\.pt is not OpenAI's RN50\.pt \(SHA-256 .* differs from "
                                                  r"afeb0e10f9e5a86d\.\.\.\); TorchScript archives are opened only"):
        score("clipiqa", X, iqa_dir=tmp_path)


def test_maniqa_crops_must_be_a_positive_integer(tmp_path):
    with pytest.raises(ValueError, match=r"crops is 0; expected a positive integer number of MANIQA test crops"):
        score("maniqa", X, iqa_dir=tmp_path, crops=0)
