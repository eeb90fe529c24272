"""Where training runs: --device, autocast precision and channels-last, always handing back CPU fp32 weights."""
from __future__ import annotations

import pytest
import torch
import torch.nn.functional as F
from click.testing import CliRunner

from compress.checkpoint import load_model, save_model
from compress.cli import main
from compress.errors import CompressError
from compress.train import TrainConfig, evaluate, fit, resolve_device, seed_everything
from compress.zoo import ModelSpec, build_model

NO_CUDA = not torch.cuda.is_available()


def _fit(spec: ModelSpec, data, **train):
    seed_everything(0)
    model = build_model(spec, data.input_shape, data.num_classes)

    def loss_fn(x, y):
        logits = model(x)
        return F.cross_entropy(logits, y), logits

    fit(model, data, TrainConfig(epochs=2, optimizer="adamw", lr=0.003, augment=False, **train), loss_fn, "device")
    return model


def _cpu_fp32_contiguous(model: torch.nn.Module) -> bool:
    return all(t.device.type == "cpu" and t.dtype == torch.float32 and t.is_contiguous()
               for t in model.state_dict().values() if t.is_floating_point())


@pytest.mark.skipif(not NO_CUDA, reason="this machine has CUDA")
def test_cuda_on_a_machine_without_it_is_one_line_and_writes_nothing(tmp_path):
    out = tmp_path / "t"
    result = CliRunner().invoke(main, ["teacher", "--data", "digits", "--device", "cuda", "--out", str(out)])
    assert result.exit_code == 2
    assert result.stderr.count("\n") == 1 and "device cuda requested" in result.stderr and "--device cpu" in result.stderr
    assert "Traceback" not in result.output + result.stderr
    assert not out.exists()
    with pytest.raises(CompressError, match="device cuda:1 requested"):
        resolve_device("cuda:1")


def test_device_sets_every_training_section_image_and_text():
    from compress.cli import _config

    cfg = _config(None, [], device="cpu")
    trains = (cfg.teacher.train, cfg.distill.train, cfg.prune.finetune, cfg.teacher.text_train,
              cfg.teacher.text_windows_train, cfg.distill.text_train, cfg.prune.text_finetune)
    assert [t.device for t in trains] == ["cpu"] * 7


def test_device_and_precision_values_are_checked():
    with pytest.raises(ValueError, match="train.device must be auto, cpu, cuda or cuda:N"):
        TrainConfig(device="gpu")
    with pytest.raises(ValueError, match="train.precision must be one of fp32, bf16, fp16"):
        TrainConfig(precision="int8")
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto") == torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if NO_CUDA:
        with pytest.raises(CompressError, match="fp16 needs a CUDA device: on a CPU use bf16"):
            resolve_device("cpu", "fp16")


def test_bf16_autocast_trains_and_hands_back_fp32_weights(digits):
    model = _fit(ModelSpec("mlp", 0.5), digits, device="cpu", precision="bf16")
    assert _cpu_fp32_contiguous(model)
    assert evaluate(model, digits.test) > 0.8


def test_channels_last_training_saves_a_loadable_checkpoint(digits, tmp_path):
    model = _fit(ModelSpec("resnet", 0.25, 8), digits, device="cpu", channels_last=True)
    assert _cpu_fp32_contiguous(model)  # safetensors refuses non-contiguous tensors
    save_model(model, tmp_path / "m.safetensors")
    reloaded = load_model(tmp_path / "m.safetensors")
    x = torch.from_numpy(digits.test.x[:4])
    assert torch.allclose(reloaded(x), model(x))


@pytest.mark.skipif(NO_CUDA, reason="needs a CUDA GPU (run where the device tool lends one)")
@pytest.mark.parametrize("precision", ["fp32", "bf16", "fp16"])
def test_cuda_training_hands_back_cpu_fp32_weights(digits, precision):
    model = _fit(ModelSpec("resnet", 0.25, 8), digits, device="cuda", precision=precision, channels_last=True)
    assert _cpu_fp32_contiguous(model)
    assert evaluate(model, digits.test) > 0.5
