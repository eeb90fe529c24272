"""Structured, physical pruning of transformer text classifiers: whole attention heads and FFN neurons.

Importance is gradient-based (Michel et al. 2019, "Are Sixteen Heads Really Better than One?"): every head's
output (and every FFN neuron's activation) is multiplied by a gate fixed at 1, and the importance is the
mean |d loss / d gate| over training batches; head scores are normalised per layer, as in the paper. The
loss is cross-entropy on the labels, or the distillation loss against a teacher when one is given.

transformers 5 has no ``prune_heads``: the query/key/value rows and the output projection's columns of the
pruned heads are sliced here, and the head count set on the attention module. Layers may keep different
head counts; ``checkpoint.save_model`` records the resulting shapes and counts, so the checkpoint rebuilds
exactly. Each layer's surgery is verified: the model's logits must equal those of the unpruned model with
the same heads and neurons masked to zero."""
from __future__ import annotations

import contextlib
from collections.abc import Iterator
from dataclasses import dataclass, field

import numpy as np
import torch
from torch import nn

from compress.data import Dataset
from compress.errors import CompressError
from compress.text_models import TextClassifier


@dataclass
class HeadPruneResult:
    heads_before: list[int]  # per layer
    heads_after: list[int]
    ffn_before: list[int]  # FFN inner size per layer
    ffn_after: list[int]
    removed_heads: dict[int, list[int]] = field(default_factory=dict)  # layer -> indices of the removed heads
    max_abs_diff: float = 0.0  # worst logit difference between the pruned model and the masked unpruned one


def head_counts(model: TextClassifier) -> list[int]:
    layout = model.layout
    return [int(getattr(layer.get_submodule(layout.attention), layout.heads_attr)) for layer in model.layers()]


def ffn_sizes(model: TextClassifier) -> list[int]:
    return [layer.get_submodule(model.layout.ffn_in).out_features for layer in model.layers()]


@contextlib.contextmanager
def gates(model: TextClassifier, head_gates: dict[int, torch.Tensor],
          neuron_gates: dict[int, torch.Tensor]) -> Iterator[None]:
    """Multiply layer i's heads by ``head_gates[i]`` (one value per head) and its FFN activations by
    ``neuron_gates[i]`` inside the block (forward pre-hooks on the projections that read them)."""
    layout, handles = model.layout, []
    counts = head_counts(model)

    def head_hook(gate: torch.Tensor, heads: int):
        def hook(_module, args):
            hidden = args[0]
            shape = hidden.shape
            return (hidden.view(*shape[:-1], heads, shape[-1] // heads).mul(gate[:, None]).view(shape), *args[1:])
        return hook

    def neuron_hook(gate: torch.Tensor):
        def hook(_module, args):
            return (args[0] * gate, *args[1:])
        return hook

    try:
        for index, layer in enumerate(model.layers()):
            if index in head_gates:
                handles.append(layer.get_submodule(layout.attention_out).register_forward_pre_hook(
                    head_hook(head_gates[index], counts[index])))
            if index in neuron_gates:
                handles.append(layer.get_submodule(layout.ffn_out).register_forward_pre_hook(neuron_hook(neuron_gates[index])))
        yield
    finally:
        for handle in handles:
            handle.remove()


def importance(model: TextClassifier, data: Dataset, samples: int = 256, batch_size: int = 32,
               teacher: TextClassifier | None = None, temperature: float = 4.0,
               alpha: float = 0.9) -> tuple[list[torch.Tensor], list[torch.Tensor]]:
    """(head importance per layer, FFN neuron importance per layer) on ``samples`` train samples."""
    from compress.distillation import distillation_loss

    counts, sizes = head_counts(model), ffn_sizes(model)
    head_gates = {i: torch.ones(n, requires_grad=True) for i, n in enumerate(counts)}
    neuron_gates = {i: torch.ones(n, requires_grad=True) for i, n in enumerate(sizes)}
    head_scores = [torch.zeros(n) for n in counts]
    neuron_scores = [torch.zeros(n) for n in sizes]
    was_training = model.training
    model.eval()  # no dropout: the scores must not depend on its random draws
    params = [p.requires_grad for p in model.parameters()]
    for p in model.parameters():
        p.requires_grad_(False)
    # a fixed random subset: the train split is ordered by class, its first samples would all be one class
    chosen = np.sort(np.random.default_rng(0).permutation(len(data.train))[:samples])
    x_all, y_all = data.train.x[chosen], data.train.y[chosen]
    try:
        with gates(model, head_gates, neuron_gates):
            for start in range(0, len(y_all), batch_size):
                x = torch.from_numpy(x_all[start:start + batch_size])
                y = torch.from_numpy(y_all[start:start + batch_size])
                logits = model(x)
                if teacher is not None:
                    with torch.no_grad():
                        target = teacher(x)
                    loss = distillation_loss(logits, target, y, temperature, alpha)
                else:
                    loss = nn.functional.cross_entropy(logits, y)
                grads = torch.autograd.grad(loss, [*head_gates.values(), *neuron_gates.values()])
                for i in range(len(counts)):
                    head_scores[i] += grads[i].abs() * len(y)
                    neuron_scores[i] += grads[len(counts) + i].abs() * len(y)
    finally:
        for p, flag in zip(model.parameters(), params):
            p.requires_grad_(flag)
        model.train(was_training)
    return head_scores, neuron_scores


def choose_heads(head_scores: list[torch.Tensor], amount: float) -> dict[int, list[int]]:
    """The ``amount`` share of all heads with the lowest per-layer-normalised importance, keeping at
    least one head in every layer: layer -> head indices to remove."""
    normalised = [s / s.norm().clamp(min=1e-12) for s in head_scores]
    ranked = sorted((float(score), layer, head) for layer, scores in enumerate(normalised)
                    for head, score in enumerate(scores.tolist()))
    total = sum(len(s) for s in head_scores)
    target = int(round(amount * total))
    remaining = [len(s) for s in head_scores]
    removed: dict[int, list[int]] = {}
    for _, layer, head in ranked:
        if sum(len(v) for v in removed.values()) >= target:
            break
        if remaining[layer] > 1:
            removed.setdefault(layer, []).append(head)
            remaining[layer] -= 1
    return {layer: sorted(heads) for layer, heads in sorted(removed.items())}


def choose_neurons(neuron_scores: list[torch.Tensor], amount: float, round_to: int = 8) -> dict[int, list[int]]:
    """Per layer, the ``amount`` share of FFN neurons with the lowest importance (the kept count rounded to
    a multiple of ``round_to``, at least ``round_to``): layer -> neuron indices to remove."""
    removed = {}
    for layer, scores in enumerate(neuron_scores):
        keep = max(round_to, int(round(len(scores) * (1 - amount) / round_to)) * round_to) if round_to else \
            max(1, int(round(len(scores) * (1 - amount))))
        keep = min(keep, len(scores))
        if keep < len(scores):
            removed[layer] = sorted(torch.argsort(scores, descending=True)[keep:].tolist())
    return removed


def prune_heads(model: TextClassifier, amount: float, data: Dataset, ffn_amount: float = 0.0,
                teacher: TextClassifier | None = None, samples: int = 256, round_to: int = 8,
                tolerance: float = 1e-3) -> HeadPruneResult:
    """Remove the ``amount`` share of attention heads and ``ffn_amount`` of every layer's FFN neurons with
    the lowest gradient importance, in place; verified layer by layer against the masked model."""
    if not 0 <= amount < 1 or not 0 <= ffn_amount < 1:
        raise CompressError(f"pruning amounts must be in [0, 1), got heads {amount} and FFN {ffn_amount}")
    heads_before, ffn_before = head_counts(model), ffn_sizes(model)
    head_scores, neuron_scores = importance(model, data, samples, teacher=teacher)
    removed_heads = choose_heads(head_scores, amount) if amount else {}
    removed_neurons = choose_neurons(neuron_scores, ffn_amount, round_to) if ffn_amount else {}
    probe = torch.from_numpy(data.val.x[:8])
    model.eval()
    head_masks: dict[int, torch.Tensor] = {}
    neuron_masks: dict[int, torch.Tensor] = {}
    worst = 0.0
    for index, layer in enumerate(model.layers()):
        if index not in removed_heads and index not in removed_neurons:
            continue
        with torch.no_grad():
            if index in removed_heads:
                mask = torch.ones(heads_before[index])
                mask[removed_heads[index]] = 0
                head_masks[index] = mask
            if index in removed_neurons:
                mask = torch.ones(ffn_before[index])
                mask[removed_neurons[index]] = 0
                neuron_masks[index] = mask
            # reference: the model as pruned so far, with this layer's units masked instead of removed
            with gates(model, {index: head_masks[index]} if index in removed_heads else {},
                       {index: neuron_masks[index]} if index in removed_neurons else {}):
                expected = model(probe)
            if index in removed_heads:
                _remove_heads(model, layer, removed_heads[index], heads_before[index])
            if index in removed_neurons:
                _remove_neurons(model, layer, removed_neurons[index])
            got = model(probe)
        if got.shape != expected.shape or not torch.isfinite(got).all():
            raise CompressError(f"pruning layer {index} broke the model's forward pass: this is a bug, please report it")
        diff = float((got - expected).abs().max())
        worst = max(worst, diff)
        if diff > tolerance * max(1.0, float(expected.abs().max())):
            raise CompressError(f"pruning layer {index} changed the logits by {diff:.3g} beyond masking those heads: "
                                "this is a bug, please report it")
    return HeadPruneResult(heads_before, head_counts(model), ffn_before, ffn_sizes(model), removed_heads, worst)


def keep_first(model: TextClassifier, heads: int, neurons: int) -> None:
    """Keep the first ``heads`` attention heads and ``neurons`` FFN neurons of every layer, in place: an untrained
    model shaped like a pruned one, for timing (``compress search``)."""
    for layer, count, size in zip(model.layers(), head_counts(model), ffn_sizes(model)):
        if heads < count:
            _remove_heads(model, layer, list(range(heads, count)), count)
        if neurons < size:
            _remove_neurons(model, layer, list(range(neurons, size)))


def _remove_heads(model: TextClassifier, layer: nn.Module, heads: list[int], count: int) -> None:
    layout = model.layout
    query = layer.get_submodule(layout.query)
    head_dim = query.out_features // count
    kept = [h for h in range(count) if h not in set(heads)]
    rows = torch.tensor([h * head_dim + d for h in kept for d in range(head_dim)], dtype=torch.long)
    for path in (layout.query, layout.key, layout.value):
        _slice_linear(layer.get_submodule(path), rows, axis=0)
    _slice_linear(layer.get_submodule(layout.attention_out), rows, axis=1)
    attention = layer.get_submodule(layout.attention)
    setattr(attention, layout.heads_attr, len(kept))
    if hasattr(attention, "all_head_size"):
        attention.all_head_size = len(kept) * head_dim


def _remove_neurons(model: TextClassifier, layer: nn.Module, neurons: list[int]) -> None:
    layout = model.layout
    size = layer.get_submodule(layout.ffn_in).out_features
    kept = torch.tensor(sorted(set(range(size)) - set(neurons)), dtype=torch.long)
    _slice_linear(layer.get_submodule(layout.ffn_in), kept, axis=0)
    _slice_linear(layer.get_submodule(layout.ffn_out), kept, axis=1)


def _slice_linear(linear: nn.Linear, index: torch.Tensor, axis: int) -> None:
    linear.weight = nn.Parameter(linear.weight.detach().index_select(axis, index).clone())
    if axis == 0:
        if linear.bias is not None:
            linear.bias = nn.Parameter(linear.bias.detach().index_select(0, index).clone())
        linear.out_features = len(index)
    else:
        linear.in_features = len(index)


def summary(result: HeadPruneResult) -> dict:
    """For the manifest: head counts and FFN sizes per layer, before and after."""
    return {"heads_before": result.heads_before, "heads_after": result.heads_after,
            "ffn_before": result.ffn_before, "ffn_after": result.ffn_after,
            "removed_heads": {str(k): v for k, v in result.removed_heads.items()},
            "head_share_removed": 1 - sum(result.heads_after) / max(1, sum(result.heads_before)),
            "max_abs_logit_diff_vs_masked": result.max_abs_diff}

