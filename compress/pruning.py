"""Structured pruning on Torch-Pruning's dependency graph: channels are physically removed, and
coupled layers (residual adds, BatchNorm, depthwise convs, the next layer's inputs) shrink together."""
from __future__ import annotations

from collections.abc import Callable

import torch
import torch_pruning as tp
from torch import nn

from compress.errors import CompressError

ROOT_TYPES = (nn.Conv2d, nn.Linear)


def out_channels(module: nn.Module) -> int:
    return module.out_channels if isinstance(module, nn.Conv2d) else module.out_features


def classifier_layer(model: nn.Module) -> nn.Module:
    """The last Linear (or Conv) in registration order: its outputs are the classes, never pruned."""
    candidates = [m for m in model.modules() if isinstance(m, ROOT_TYPES)]
    if not candidates:
        raise CompressError("the model has no Conv2d or Linear layer to prune")
    return candidates[-1]


def first_layer(model: nn.Module) -> nn.Module:
    return next(m for m in model.modules() if isinstance(m, ROOT_TYPES))


def channel_table(model: nn.Module) -> dict[str, int]:
    """Output channels (or features) of every Conv2d/Linear, by module name."""
    return {name: out_channels(m) for name, m in model.named_modules() if isinstance(m, ROOT_TYPES)}


def shrink_to_match(model: nn.Module, target: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """Prune ``model`` in place to the exact channel counts of ``target`` (same architecture, smaller
    width), keeping the channels with the largest L1 norm across each coupled group."""
    names = {module: name for name, module in model.named_modules()}
    target_channels = channel_table(target)
    graph = tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *input_shape))
    importance = tp.importance.GroupMagnitudeImportance(p=1)
    roots = [(group[0].dep.target.module, group[0].dep.handler)
             for group in graph.get_all_groups(ignored_layers=[classifier_layer(model)], root_module_types=ROOT_TYPES)]
    for module, handler in roots:
        name = names[module]
        if name not in target_channels:
            raise CompressError(f"layer {name} has no counterpart in the smaller model")
        keep = target_channels[name]
        current = out_channels(module)
        if keep > current:
            raise CompressError(f"layer {name} would need to grow from {current} to {keep} channels")
        if keep == current:
            continue
        scores = importance(graph.get_pruning_group(module, handler, idxs=list(range(current))))
        kept = set(torch.topk(scores, keep).indices.tolist())
        graph.get_pruning_group(module, handler, idxs=[i for i in range(current) if i not in kept]).prune()
    expected = {k: v.shape for k, v in target.state_dict().items()}
    actual = {k: v.shape for k, v in model.state_dict().items()}
    if expected.keys() != actual.keys():
        raise CompressError("the two models have different layers")
    mismatched = [k for k in expected if expected[k] != actual[k]]
    if mismatched:
        raise CompressError(f"shape of {mismatched[0]} differs after shrinking ({tuple(actual[mismatched[0]])} vs {tuple(expected[mismatched[0]])})")
    return model


IMPORTANCES: dict[str, Callable[[], tp.importance.Importance]] = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "bn_scale": lambda: tp.importance.BNScaleImportance(),
    "taylor": lambda: tp.importance.GroupTaylorImportance(),
    "random": lambda: tp.importance.RandomImportance(),
}


def make_pruner(model: nn.Module, input_shape: tuple[int, ...], importance: str, ratio: float, steps: int,
                global_pruning: bool, round_to: int | None, protected: list[nn.Module]) -> tp.pruner.MetaPruner:
    """A Torch-Pruning pruner that removes ``ratio`` of the channels over ``steps`` equal steps."""
    return tp.pruner.MetaPruner(
        model, torch.zeros(1, *input_shape), importance=IMPORTANCES[importance](), pruning_ratio=ratio,
        iterative_steps=steps, global_pruning=global_pruning, ignored_layers=protected,
        round_to=round_to, max_pruning_ratio=0.95, root_module_types=list(ROOT_TYPES))
