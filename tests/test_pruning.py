"""compress.pruning: dependency-aware structured pruning, head pruning, importance, allocation,
replaying a step to find the layer that breaks a model, and unstructured magnitude pruning."""
from __future__ import annotations

import copy

import pytest
import torch
import torch_pruning as tp
from torch import nn

from compress.errors import CompressError
from compress.metrics import model_stats
from compress.pruning import (
    NormScaleImportance,
    channel_table,
    find_breaking_group,
    magnitude_prune,
    make_permanent,
    permanent_copy,
    prune_copy,
    shrink_to_match,
    weight_sparsity,
)
from compress.zoo import ModelSpec, build_model

SHAPE = (1, 8, 8)


def _model(arch: str, width: float = 0.5, depth: int | None = None, seed: int = 0) -> nn.Module:
    torch.manual_seed(seed)
    return build_model(ModelSpec(arch, width, depth), SHAPE, 10).eval()


def test_pruning_works_on_a_copy_and_removes_channels_physically():
    model = _model("resnet")
    before = channel_table(model)
    pruned, records = prune_copy(model, SHAPE, 0.5, "l1", protected=("stem.0",))
    assert channel_table(model) == before  # the caller's model is untouched
    after = channel_table(pruned)
    assert after["stages.0.0.conv1"] == before["stages.0.0.conv1"] // 2
    assert pruned.stages[0][0].conv2.in_channels == after["stages.0.0.conv1"]  # the next layer's inputs shrank too
    assert after["stem.0"] == before["stem.0"]  # protected, and the residual stream coupled to it
    assert records and all(r.indices for r in records)
    assert model_stats(pruned, SHAPE)["params"] < model_stats(model, SHAPE)["params"]


def test_removing_whole_heads_equals_zeroing_their_outputs():
    """The pruned attention must compute exactly what the original does without those heads."""
    model = _model("vit", depth=2)
    keep_mlp = tuple(f"blocks.{i}.mlp.0" for i in range(2))
    pruned, _ = prune_copy(model, SHAPE, 0.5, "l2", protected=("patch_embed",) + keep_mlp)
    reference = copy.deepcopy(model)
    for original, small, ref in zip(model.blocks, pruned.blocks, reference.blocks):
        head_dim = original.attn.head_dim
        assert small.attn.qkv.out_features == 3 * 2 * head_dim  # 2 of 4 heads left, head size unchanged
        q_rows = original.attn.qkv.weight[:4 * head_dim]
        kept = {h for h in range(4) for r in small.attn.qkv.weight[:2 * head_dim][::head_dim]
                if torch.equal(r, q_rows[h * head_dim])}
        assert len(kept) == 2
        for head in set(range(4)) - kept:
            with torch.no_grad():
                ref.attn.proj.weight[:, head * head_dim:(head + 1) * head_dim] = 0
    x = torch.randn(4, *SHAPE)
    with torch.no_grad():
        assert torch.allclose(pruned(x), reference(x), atol=1e-5)


def test_grouped_convs_and_group_norm_stay_divisible():
    model = _model("resnext", width=1.0)
    pruned, _ = prune_copy(model, SHAPE, 0.6, "l1", round_to=1, protected=("stem.0",))
    grouped = [m for m in pruned.modules() if isinstance(m, nn.Conv2d) and m.groups > 1]
    assert grouped and all(m.in_channels % m.groups == 0 and m.out_channels % m.groups == 0 for m in grouped)
    assert all(m.num_channels % m.num_groups == 0 for m in pruned.modules() if isinstance(m, nn.GroupNorm))
    assert pruned.blocks[0].body[0].out_channels < model.blocks[0].body[0].out_channels
    assert pruned(torch.randn(2, *SHAPE)).shape == (2, 10)


def test_round_to_keeps_channel_counts_multiples_where_layers_are_large_enough():
    model = _model("mobilenet", width=1.0)
    pruned, _ = prune_copy(model, SHAPE, 0.4, "l1", round_to=8, protected=("stem.0",))
    changed = {n: c for n, c in channel_table(pruned).items() if c != channel_table(model)[n]}
    assert changed and all(c % 8 == 0 for c in changed.values())


@pytest.mark.parametrize("global_pruning", [False, True])
def test_a_larger_ratio_never_leaves_more_macs(global_pruning):
    model = _model("senet")
    macs = [model_stats(prune_copy(model, SHAPE, r, "l1", global_pruning, 8, ("stem.0",))[0], SHAPE)["macs"]
            for r in (0.0, 0.2, 0.4, 0.6, 0.8, 0.95)]
    assert macs == sorted(macs, reverse=True) and macs[-1] < 0.3 * macs[0]


def test_uniform_cuts_every_group_alike_and_global_does_not():
    model = _model("mlp", width=1.0)
    with torch.no_grad():
        model.features[1].weight.mul_(torch.linspace(0.01, 2.0, 128)[:, None])  # uneven first hidden layer
    uniform, _ = prune_copy(model, (64,), 0.5, "l1")
    global_, _ = prune_copy(model, (64,), 0.5, "l1", global_pruning=True)
    assert [uniform.features[i].out_features for i in (1, 3)] == [64, 32]
    sizes = [global_.features[i].out_features for i in (1, 3)]
    assert sizes != [64, 32] and abs(sum(sizes) - 96) <= 1  # half of all 192 hidden units, unevenly


def test_norm_scale_importance_ranks_by_norm_weights_and_falls_back_to_l1():
    model = _model("resnet")
    with torch.no_grad():
        model.stages[0][0].bn1.weight[3] = 0.0  # network slimming: a zero scale means an unused channel
    pruned, records = prune_copy(model, SHAPE, 1 / 16, "bn_scale", protected=("stem.0",))
    record = next(r for r in records if r.layer == "stages.0.0.conv1")
    assert record.indices == (3,)
    mlp = _model("mlp", width=1.0)
    graph = tp.DependencyGraph().build_dependency(mlp, example_inputs=torch.zeros(1, 64), verbose=False)
    group = graph.get_pruning_group(mlp.features[1], tp.prune_linear_out_channels, list(range(128)))
    assert torch.allclose(NormScaleImportance()(group), tp.importance.GroupMagnitudeImportance(p=1)(group))


def test_protecting_an_unknown_layer_lists_the_layers():
    with pytest.raises(CompressError, match="protected layer 'nope' is not in the model; layers include: stem.0"):
        prune_copy(_model("resnet"), SHAPE, 0.3, "l1", protected=("nope",))


class FixedView(nn.Module):
    """A model whose forward hard-codes a channel count: pruning conv2 breaks it."""

    def __init__(self):
        super().__init__()
        self.conv1 = nn.Conv2d(1, 8, 3, padding=1)
        self.conv2 = nn.Conv2d(8, 16, 3, padding=1)
        self.classifier = nn.Linear(16 * 8 * 8, 10)

    def forward(self, x):
        x = torch.relu(self.conv2(torch.relu(self.conv1(x))))
        return self.classifier(x.view(x.shape[0], 16 * 8 * 8))


def test_replaying_a_step_names_the_group_that_breaks_the_model():
    model = FixedView().eval()
    _, records = prune_copy(model, SHAPE, 0.5, "l1")
    assert {r.layer for r in records} == {"conv1", "conv2"}

    def check(candidate):
        candidate(torch.randn(2, *SHAPE))

    record, error = find_breaking_group(model, SHAPE, records, check)
    assert record.layer == "conv2" and record.outputs and "classifier" in record.members
    assert "invalid for input of size" in str(error)


def test_shrink_to_match_copies_a_wider_model_into_a_narrower_one():
    teacher, student = _model("resnet", 1.0), _model("resnet", 0.5, seed=1)
    shrunk = shrink_to_match(copy.deepcopy(teacher), student, SHAPE)
    assert {k: v.shape for k, v in shrunk.state_dict().items()} == {k: v.shape for k, v in student.state_dict().items()}
    with pytest.raises(CompressError, match="attention"):
        shrink_to_match(_model("vit", 1.0), _model("vit", 0.5), SHAPE)


def test_magnitude_pruning_zeroes_the_smallest_weights_under_one_threshold():
    model = _model("mlp", width=1.0)
    magnitudes = torch.cat([m.weight.detach().abs().flatten() for m in model.modules() if isinstance(m, nn.Linear)
                            and m is not model.classifier])
    info = magnitude_prune(model, 0.6, protected=("classifier",))
    assert info["threshold"] == pytest.approx(float(torch.sort(magnitudes).values[int(0.6 * len(magnitudes))]), rel=1e-6)
    frozen = permanent_copy(model)
    layers = [frozen.features[1], frozen.features[3]]
    assert sum(int((m.weight == 0).sum()) for m in layers) == round(0.6 * len(magnitudes))
    assert not any(name.endswith("_orig") for name, _ in frozen.named_parameters())
    # the masks keep the zeros through training steps
    optimizer = torch.optim.SGD(model.parameters(), lr=0.5)
    model(torch.randn(8, 64)).sum().backward()
    optimizer.step()
    magnitude_prune(model, 0.8, protected=("classifier",))  # a second round goes further
    make_permanent(model)
    assert weight_sparsity(model)["zero_weights"] >= round(0.8 * len(magnitudes))
