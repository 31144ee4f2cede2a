"""A device named by the user that this torch cannot use is one line saying why, where the
device is given (``FastCHGNet.load(map_location=)``, compat ``use_device``, $CHGNET_DEVICE),
not torch's AssertionError from deep inside ``.to``. The torch build is simulated, so the
tests mean the same on a CPU-only torch and on a CUDA one."""

from __future__ import annotations

import pytest
import torch

from fastchgnet import FastCHGNet
from fastchgnet.model.device import check_device


@pytest.fixture
def cpu_only_torch(monkeypatch):
    """torch as a CPU-only build sees itself."""
    monkeypatch.setattr(torch.version, "cuda", None)
    monkeypatch.setattr(torch.version, "hip", None)
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)


def test_loading_a_model_onto_cuda_in_a_cpu_only_torch_is_one_line(cpu_only_torch, tmp_path):
    FastCHGNet(n_conv=2).save(tmp_path / "model.pt")
    with pytest.raises(ValueError, match=r"^device 'cuda': CUDA is not available in this torch"):
        FastCHGNet.load(tmp_path / "model.pt", map_location="cuda")
    with pytest.raises(ValueError, match=r"^device 'cuda:0': CUDA is not available in this"):
        FastCHGNet.load(tmp_path / "model.pt", map_location=torch.device("cuda", 0))
    assert FastCHGNet.load(tmp_path / "model.pt", map_location="cpu").config.n_conv == 2


def test_compat_use_device_cuda_in_a_cpu_only_torch_is_one_line(cpu_only_torch, monkeypatch):
    from fastchgnet.compat import CHGNet, CHGNetCalculator
    from fastchgnet.compat.model import determine_device
    from fastchgnet.model.config import ModelConfig

    message = r"^device 'cuda': CUDA is not available in this torch build"
    with pytest.raises(ValueError, match=message):
        CHGNetCalculator(CHGNet(ModelConfig()), use_device="cuda")
    with pytest.raises(ValueError, match=message):
        CHGNet.load(use_device="cuda", verbose=False)  # before any file is read
    monkeypatch.setenv("CHGNET_DEVICE", "cuda")
    with pytest.raises(ValueError, match=message):
        determine_device()
    monkeypatch.delenv("CHGNET_DEVICE")
    assert determine_device() == "cpu"


def test_cuda_on_a_machine_without_a_gpu_or_past_its_gpus_is_one_line(monkeypatch):
    monkeypatch.setattr(torch.version, "cuda", "12.4")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: False)
    with pytest.raises(ValueError, match=r"^device 'cuda': .*on this machine .*no GPU or driver"):
        check_device("cuda")
    monkeypatch.setattr(torch.cuda, "is_available", lambda: True)
    monkeypatch.setattr(torch.cuda, "device_count", lambda: 1)
    assert check_device("cuda:0") == torch.device("cuda", 0)
    with pytest.raises(ValueError, match=r"^device 'cuda:3': this machine has 1 CUDA device"):
        check_device("cuda:3")


def test_a_device_string_torch_does_not_know_is_one_line():
    with pytest.raises(ValueError, match=r"^device 'gpu': not a torch device"):
        check_device("gpu")
    with pytest.raises(ValueError, match=r"^--device 'gpu': not a torch device"):
        check_device("gpu", "--device")
    assert check_device("cpu") == torch.device("cpu")


def test_a_device_type_this_torch_lacks_is_one_line():
    """mps or xpu on a build without them: torch's RuntimeError / AssertionError came from
    deep inside ``.to``; the CLI takes only cpu and cuda."""
    for kind in ("mps", "xpu"):
        with pytest.raises(ValueError, match=rf"^device '{kind}': not usable here \("):
            check_device(kind)
    assert check_device("meta") == torch.device("meta")
    with pytest.raises(ValueError, match=r"^--device 'meta': use one of cpu, cuda"):
        check_device("meta", "--device", kinds=("cpu", "cuda"))


def test_the_cli_device_flag_names_itself_in_the_message(cpu_only_torch):
    with pytest.raises(ValueError, match=r"^--device 'cuda': CUDA is not available in this torch"):
        check_device("cuda", "--device")


def test_our_calculator_on_cuda_in_a_cpu_only_torch_is_one_line(cpu_only_torch):
    from fastchgnet.md.calculator import Calculator

    with pytest.raises(ValueError, match=r"^device 'cuda': CUDA is not available in this torch"):
        Calculator(FastCHGNet(n_conv=2), device="cuda")
