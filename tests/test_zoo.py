"""The model zoo: every architecture builds for small and MNIST-sized inputs, runs, and exports."""
from __future__ import annotations

import pytest
import torch
from torch import nn

from compress.checkpoint import load_model, save_model
from compress.errors import CompressError
from compress.onnx_export import ExportConfig, export_model
from compress.zoo import ARCHITECTURES, Attention, ModelSpec, build_model


@pytest.mark.parametrize("arch", ARCHITECTURES)
@pytest.mark.parametrize("input_shape", [(1, 8, 8), (1, 28, 28), (3, 32, 32)])
def test_every_architecture_maps_images_to_class_scores(arch, input_shape):
    torch.manual_seed(0)
    model = build_model(ModelSpec(arch, 0.5), input_shape, 10).eval()
    with torch.no_grad():
        logits = model(torch.randn(3, *input_shape))
    assert logits.shape == (3, 10)
    assert torch.isfinite(logits).all()


@pytest.mark.parametrize("arch", ARCHITECTURES)
def test_every_architecture_exports_and_matches_pytorch(arch, digits, tmp_path):
    model = build_model(ModelSpec(arch, 0.5), digits.input_shape, digits.num_classes)
    parity = export_model(model, tmp_path / f"{arch}.onnx", digits, ExportConfig(parity_samples=32), {"test": arch})
    assert parity["max_abs_diff"] < 1e-3 and parity["top1_agreement"] == 1.0


def test_width_scales_every_new_architecture_down():
    for arch in ("resnext", "densenet", "senet", "vit"):
        wide = sum(p.numel() for p in build_model(ModelSpec(arch, 1.0), (1, 28, 28), 10).parameters())
        narrow = sum(p.numel() for p in build_model(ModelSpec(arch, 0.5), (1, 28, 28), 10).parameters())
        assert narrow < 0.5 * wide, arch


def test_resnext_uses_grouped_convs_and_group_norm_that_divide_its_widths():
    model = build_model(ModelSpec("resnext", 0.75, 2), (1, 28, 28), 10)
    grouped = [m for m in model.modules() if isinstance(m, nn.Conv2d) and 1 < m.groups < m.out_channels]
    norms = [m for m in model.modules() if isinstance(m, nn.GroupNorm)]
    assert len(grouped) == 6 and norms  # 3 stages x 2 blocks
    assert all(m.out_channels % m.groups == 0 for m in grouped)
    assert all(m.num_channels % m.num_groups == 0 for m in norms)


def test_densenet_concatenates_its_growth_onto_the_input():
    model = build_model(ModelSpec("densenet", 1.0, 2), (1, 28, 28), 10)
    layer = model.features[0]
    x = torch.randn(2, 24, 14, 14)
    assert layer(x).shape == (2, 24 + 12, 14, 14)
    assert model.stem(torch.randn(2, 1, 28, 28)).shape[1] == 3 * 8  # three concatenated Inception branches


def test_senet_gates_every_block_with_squeeze_excitation():
    model = build_model(ModelSpec("senet", 0.5, 2), (1, 28, 28), 10)
    assert sum(1 for name, _ in model.named_modules() if name.endswith(".se")) == 6


def test_vit_reads_its_head_count_from_the_weights():
    model = build_model(ModelSpec("vit", 0.5, 2), (1, 28, 28), 10)
    attention = model.blocks[0].attn
    assert isinstance(attention, Attention) and attention.head_dim == 8
    assert attention.qkv.out_features == 3 * 4 * 8
    assert model.pos_embed.shape == (1, 7 * 7 + 1, 32)  # 4-pixel patches of 28x28, plus the class token


def test_pickled_models_of_every_architecture_load_back(tmp_path):
    for arch in ARCHITECTURES:
        model = build_model(ModelSpec(arch, 0.5), (1, 8, 8), 10).eval()
        save_model(model, tmp_path / f"{arch}.pt")
        x = torch.randn(2, 1, 8, 8)
        with torch.no_grad():
            assert torch.equal(load_model(tmp_path / f"{arch}.pt")(x), model(x))


def test_unknown_architecture_lists_the_choices():
    with pytest.raises(ValueError, match="unknown architecture 'vgg': choose one of mlp, resnet, mobilenet, resnext, densenet, senet, vit"):
        ModelSpec("vgg")


def test_image_architectures_refuse_flat_inputs():
    with pytest.raises(CompressError, match="vit needs image inputs"):
        build_model(ModelSpec("vit"), (64,), 10)
