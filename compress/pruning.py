"""Structured pruning on Torch-Pruning's dependency graph: channels, neurons and whole attention heads
are physically removed, and coupled layers (residual adds, concatenations, BatchNorm/GroupNorm/
LayerNorm, depthwise and grouped convs, squeeze-and-excitation gates, the Linear after a Flatten,
the next layer's inputs) shrink together.

Every pruning here works on a copy: the caller's model is never changed, so a step that turns out
to break the model can be refused by simply not taking the copy (``find_breaking_group`` then
replays the step one coupled group at a time to name the layer that broke it)."""
from __future__ import annotations

import copy
import math
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch_pruning as tp
from torch import nn

from compress.errors import CompressError

ROOT_TYPES = (nn.Conv2d, nn.Linear)
NORM_TYPES = (nn.modules.batchnorm._BatchNorm, nn.GroupNorm, nn.LayerNorm)
MAX_LAYER_RATIO = 0.95  # no layer loses more than this share of its channels (Torch-Pruning's max_pruning_ratio)


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


def attention_heads(model: nn.Module) -> dict[nn.Linear, int]:
    """Fused ``qkv`` projection -> head count, for every attention module that exposes ``qkv`` (a Linear
    producing q, k and v) and ``head_dim`` and derives its head count from the weights (as zoo.Attention does)."""
    return {m.qkv: m.qkv.out_features // (3 * m.head_dim) for m in model.modules()
            if isinstance(getattr(m, "qkv", None), nn.Linear) and isinstance(getattr(m, "head_dim", None), int)}


def channel_table(model: nn.Module) -> dict[str, int]:
    """Output channels (or features) of every Conv2d/Linear by module name, and ``<attention>.heads``
    for every attention module's head count."""
    table = {name: out_channels(m) for name, m in model.named_modules() if isinstance(m, ROOT_TYPES)}
    for name, module in model.named_modules():
        if isinstance(getattr(module, "qkv", None), nn.Linear) and isinstance(getattr(module, "head_dim", None), int):
            table[f"{name}.heads"] = module.qkv.out_features // (3 * module.head_dim)
    return table


def removed_channel_fraction(before: dict[str, int], after: dict[str, int], protected: list[str]) -> float:
    """Share of the Conv/Linear output channels removed, over the layers that were not protected."""
    names = [n for n in before if not n.endswith(".heads") and n not in protected]
    total = sum(before[n] for n in names)
    return 1 - sum(after[n] for n in names) / total if total else 0.0


def shrink_to_match(model: nn.Module, target: nn.Module, input_shape: tuple[int, ...]) -> nn.Module:
    """Prune ``model`` in place to the exact channel counts of ``target`` (same architecture, smaller
    width), keeping the channels with the largest L1 norm across each coupled group."""
    if attention_heads(model):
        raise CompressError("shrinking attention layers to another width would mix heads; the student starts from scratch")
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


class NormScaleImportance(tp.importance.Importance):
    """Network slimming (Liu et al. 2017) for any normalisation: a channel's importance is the mean |scale|
    of the BatchNorm, GroupNorm or LayerNorm layers it passes through. Groups without such a layer (an
    MLP's hidden units, a transformer's MLP) fall back to the group L1 norm, mean-normalised like the
    scales so that global ranking can compare both."""

    def __init__(self):
        self.fallback = tp.importance.GroupMagnitudeImportance(p=1)

    @torch.no_grad()
    def __call__(self, group) -> torch.Tensor | None:
        total, count = None, 0
        for item in group:
            layer = item.dep.target.module
            if not isinstance(layer, NORM_TYPES) or getattr(layer, "weight", None) is None:
                continue
            if any(index is None for index in item.root_idxs):
                continue
            if total is None:
                total = torch.zeros(len(group[0].idxs))
            total.scatter_add_(0, torch.tensor(item.root_idxs), layer.weight.detach()[item.idxs].abs().float())
            count += 1
        if total is None:
            return self.fallback(group)
        scores = total / count
        return scores / scores.mean().clamp_min(1e-12)


IMPORTANCES: dict[str, Callable[[], tp.importance.Importance]] = {
    "l1": lambda: tp.importance.GroupMagnitudeImportance(p=1),
    "l2": lambda: tp.importance.GroupMagnitudeImportance(p=2),
    "bn_scale": NormScaleImportance,
    "taylor": lambda: tp.importance.GroupTaylorImportance(),
    "random": lambda: tp.importance.RandomImportance(),
}
NEEDS_GRADIENTS = ("taylor",)


@dataclass(frozen=True)
class GroupRecord:
    """One coupled group a pruning step removed: its root layer, whether the root's outputs (or inputs)
    were cut, the root indices removed, and every layer that shrank with it."""

    layer: str
    outputs: bool
    indices: tuple[int, ...]
    members: tuple[str, ...]


@dataclass
class _Plan:
    """One prunable coupled group: its root, its pruning units (a channel, the same channel of every
    channel group of a grouped conv or GroupNorm, or a whole attention head) and their scores."""

    root: nn.Module
    handler: object
    units: list[list[int]]  # root indices of each unit
    scores: torch.Tensor  # one per unit, higher = more important
    multiple: int  # kept units stay a multiple of this (round_to), unless the group is smaller
    heads: bool
    keep: int = 0  # units to keep, set by the allocation

    def kept_units(self, target: float) -> int:
        """The allowed unit count nearest to ``target`` (ties keep more): a multiple of ``multiple`` or the
        current count, never below ``multiple`` nor below 1 - MAX_LAYER_RATIO of the current count."""
        count = len(self.units)
        floor = max(1, math.ceil((1 - MAX_LAYER_RATIO) * count))
        options = {count} | {k for k in range(self.multiple, count + 1, self.multiple) if k >= floor}
        return min(options, key=lambda k: (abs(k - target), -k))


def prune_copy(model: nn.Module, input_shape: tuple[int, ...], ratio: float, importance: str,
               global_pruning: bool = False, round_to: int | None = 1,
               protected: tuple[str, ...] = (), unsafe: dict[str, str] | None = None) -> tuple[nn.Module, list[GroupRecord]]:
    """A pruned copy of ``model``: ``ratio`` of the channels of every unprotected coupled group removed
    (uniform), or the lowest-ranked ``ratio`` of all channels at once (``global_pruning``); attention
    modules lose that share of whole heads instead. Channel counts stay multiples of ``round_to`` where
    the layer is large enough, and no group loses all its channels. The ranking uses Torch-Pruning's
    dependency graph and importance; the allocation is done here so that more ``ratio`` never prunes
    less. For ``taylor`` the model's parameters must hold gradients. A group that would leave a layer without
    channels, or that Torch-Pruning fails on, raises UnsafeGroup before it is applied, or (when ``unsafe`` is
    a dict) is skipped and recorded there (root layer -> why). Returns the copy and what was removed."""
    candidate = _copy_with_gradients(model)
    ignored = _ignored_modules(candidate, protected)
    names = {module: name for name, module in candidate.named_modules()}
    graph = dependency_graph(candidate, input_shape)
    plans = _plans(candidate, graph, ignored, IMPORTANCES[importance](), round_to)
    _allocate(plans, ratio, global_pruning)
    records = _apply(graph, plans, names, unsafe)
    candidate.zero_grad(set_to_none=True)
    return candidate, records


def _ignored_modules(model: nn.Module, protected: tuple[str, ...]) -> set[nn.Module]:
    """The classifier and the protected layers, with everything inside them: never pruned."""
    modules = dict(model.named_modules())
    unknown = [name for name in protected if name not in modules]
    if unknown:
        raise CompressError(f"protected layer {unknown[0]!r} is not in the model; layers include: "
                            f"{', '.join(n for n, m in modules.items() if isinstance(m, ROOT_TYPES))[:300]}")
    return {sub for layer in [classifier_layer(model)] + [modules[name] for name in protected] for sub in layer.modules()}


def _plans(model: nn.Module, graph: tp.DependencyGraph, ignored: set[nn.Module], scorer, round_to: int | None) -> list[_Plan]:
    """One plan per prunable coupled group: its units (channels, or whole attention heads) and their scores."""
    heads = attention_heads(model)
    plans = []
    for group in graph.get_all_groups(ignored_layers=list(ignored), root_module_types=ROOT_TYPES):
        qkv = [item.dep.target.module for item in group
               if item.dep.target.module in heads and graph.is_out_channel_pruning_fn(item.dep.handler)]
        if qkv:
            group = _attention_root(graph, group)
            if group is None:
                continue
        scores = scorer(group)
        if scores is None:  # no weights in the group to rank by
            continue
        scores = scores.detach().float().cpu()
        count = len(scores)
        if qkv:
            num_heads = heads[qkv[0]]
            size = count // num_heads
            units = [list(range(h * size, (h + 1) * size)) for h in range(num_heads)]
            plans.append(_Plan(group[0].dep.target.module, group[0].dep.handler, units,
                               scores.view(num_heads, size).mean(1), 1, True))
            continue
        channel_groups = _channel_groups(graph, group)
        if count % channel_groups:
            channel_groups = 1
        size = count // channel_groups
        units = [[j + g * size for g in range(channel_groups)] for j in range(size)]
        multiple = max(1, math.lcm(channel_groups, max(1, round_to or 1)) // channel_groups)
        plans.append(_Plan(group[0].dep.target.module, group[0].dep.handler, units,
                           scores.view(channel_groups, size).mean(0), multiple, False))
    return plans


def _allocate(plans: list[_Plan], ratio: float, global_pruning: bool) -> None:
    """How many units each plan keeps: ``ratio`` removed per group, or the lowest-ranked overall (channels and
    heads allocated separately, since their scores are not comparable)."""
    for kind in (False, True):
        chosen = [plan for plan in plans if plan.heads == kind]
        targets = _global_targets(chosen, ratio) if global_pruning else [len(p.units) * (1 - ratio) for p in chosen]
        for plan, target in zip(chosen, targets):
            plan.keep = plan.kept_units(target)


def _apply(graph: tp.DependencyGraph, plans: list[_Plan], names: dict[nn.Module, str],
           unsafe: dict[str, str] | None) -> list[GroupRecord]:
    """Remove each plan's lowest-ranked units, never emptying a layer; unsafe groups are skipped into ``unsafe``
    (or raise UnsafeGroup when it is None)."""
    records = []
    for plan in plans:
        order = torch.argsort(plan.scores).tolist()
        count, group, emptied = _safe_cut(graph, plan, order, len(plan.units) - plan.keep, names)
        if count == 0:
            if emptied and unsafe is not None:
                unsafe[names[plan.root]] = f"any cut of it would leave {emptied!r} without channels"
            continue
        indices = sorted(i for unit in order[:count] for i in plan.units[unit])
        records.append(GroupRecord(
            layer=names[plan.root], outputs=graph.is_out_channel_pruning_fn(plan.handler), indices=tuple(indices),
            members=tuple(dict.fromkeys(names[item.dep.target.module] for item in group
                                        if item.dep.target.module in names and names[item.dep.target.module]))))
        try:
            group.prune()
        except Exception as exc:  # Torch-Pruning itself failed on this group: name it
            error = UnsafeGroup(records.pop().layer, f"Torch-Pruning failed on it ({type(exc).__name__}: "
                                f"{_first_line(exc)})")
            if unsafe is None:
                raise error from exc
            unsafe[error.layer] = error.why
    return records


class UnsafeGroup(CompressError):
    """Pruning the coupled group rooted at ``layer`` would break the model (``why``), so it was not applied."""

    def __init__(self, layer: str, why: str):
        super().__init__(f"pruning layer {layer!r} refused: {why}; add {layer!r} to prune.protected")
        self.layer, self.why = layer, why


def dependency_graph(model: nn.Module, input_shape: tuple[int, ...]) -> tp.DependencyGraph:
    try:
        return tp.DependencyGraph().build_dependency(model, example_inputs=torch.zeros(1, *input_shape), verbose=False)
    except Exception as exc:  # Torch-Pruning traces the forward pass and may fail on any op it cannot follow
        raise CompressError(f"Torch-Pruning cannot trace {type(model).__name__} to find its coupled layers "
                            f"({type(exc).__name__}: {_first_line(exc)}); this model cannot be pruned structurally, "
                            "use prune.target=sparsity") from exc


def _safe_cut(graph, plan: _Plan, order: list[int], count: int, names: dict):
    """The most of the ``count`` lowest-ranked units of ``plan`` that can go without leaving a coupled layer
    with no channels (a concatenation's half, a slice), found by bisection: (units, group, emptied layer
    or None). Channels coupled across layers of different widths can map a 95% cut of one onto all of another."""
    def group_of(units: int):
        indices = sorted(i for unit in order[:units] for i in plan.units[unit])
        return graph.get_pruning_group(plan.root, plan.handler, indices)

    if count == 0:
        return 0, None, None
    group = group_of(count)
    emptied = _emptied_member(graph, group, names)
    if emptied is None:
        return count, group, None
    low, high = 0, count  # low is safe, high is not
    while high - low > 1:
        middle = (low + high) // 2
        if _emptied_member(graph, group_of(middle), names) is None:
            low = middle
        else:
            high = middle
    return low, (group_of(low) if low else None), emptied


def _emptied_member(graph, group, names: dict) -> str | None:
    """The first layer the group would leave with no channels (inputs or outputs), if any."""
    for item in group:
        module, handler = item.dep.target.module, item.dep.handler
        pruner = graph.get_pruner_of_module(module) if isinstance(module, nn.Module) else None
        if pruner is None:
            continue
        if graph.is_out_channel_pruning_fn(handler):
            size = pruner.get_out_channels(module)
        elif graph.is_in_channel_pruning_fn(handler):
            size = pruner.get_in_channels(module)
        else:
            continue
        if size is not None and len(set(item.idxs)) >= size:
            return names.get(module) or type(module).__name__
    return None


def find_unsafe_layers(model: nn.Module, input_shape: tuple[int, ...], protected: list[str],
                       check: Callable[[nn.Module], None], most: int = 32) -> dict[str, str]:
    """Layers to protect, beyond ``protected``, so that pruning as far as allowed (MAX_LAYER_RATIO of every
    group) neither empties a layer, nor fails inside Torch-Pruning, nor breaks ``check`` (which raises on a
    broken model, e.g. a reshape with channel counts written into the code): layer -> why. Found by trial on
    copies, one layer at a time, before any pruning is applied to the model."""
    found: dict[str, str] = {}
    for _ in range(most):
        unsafe: dict[str, str] = {}
        candidate, records = prune_copy(model, input_shape, MAX_LAYER_RATIO, "l1",
                                        protected=tuple(protected) + tuple(found), unsafe=unsafe)
        if unsafe:  # protect them all, then try again: protecting a layer changes the groups around it
            found.update(unsafe)
            continue
        try:
            check(candidate)
            return found
        except Exception as exc:  # any error of a broken forward pass
            broken = find_breaking_group(model, input_shape, records, check)
            if broken is None or broken[0].layer in found:
                raise CompressError(f"pruning breaks the model ({_first_line(exc)}), and no single layer's pruning "
                                    "does alone: protect layers with prune.protected") from exc
            found[broken[0].layer] = (f"pruning it breaks the forward pass ({_first_line(broken[1])}): the model "
                                      "likely reshapes with sizes written into its code")
    raise CompressError(f"more than {most} rounds of protecting layers to prune this model safely "
                        f"({', '.join(list(found)[:5])}, ...): protect them with prune.protected, or use "
                        "prune.target=sparsity")


def _first_line(exc: BaseException) -> str:
    text = str(exc).strip()
    return text.splitlines()[0][:300] if text else type(exc).__name__


def _global_targets(plans: list[_Plan], ratio: float) -> list[float]:
    """Units to keep per group when the lowest-scoring ``ratio`` of all channels (heads) goes at once.
    Scores are mean-normalised per group by the importances, so they compare across groups."""
    weights = [len(p.units[0]) for p in plans]  # channels per unit
    pooled = sorted((float(score), index) for index, plan in enumerate(plans) for score in plan.scores)
    budget = ratio * sum(len(p.units) * w for p, w in zip(plans, weights))
    removed = [0] * len(plans)
    for _, index in pooled:
        if budget < weights[index] / 2:
            break
        removed[index] += 1
        budget -= weights[index]
    return [len(p.units) - r for p, r in zip(plans, removed)]


def _attention_root(graph, group):
    """Re-root an attention group on the layer that reads the heads (the output projection's inputs), as
    Torch-Pruning's MetaPruner does, so head h is root indices h*head_dim .. (h+1)*head_dim - 1."""
    downstream = None
    for item in group:
        if isinstance(item.dep.target.module, ROOT_TYPES) and graph.is_in_channel_pruning_fn(item.dep.handler):
            downstream = item
    if downstream is None:
        return None
    return graph.get_pruning_group(downstream.dep.target.module, downstream.dep.handler, list(downstream.idxs))


def _channel_groups(graph, group) -> int:
    """How many equal channel groups the group's layers impose (grouped convs, GroupNorm); depthwise convs
    impose none (each channel is its own group and shrinks with its input)."""
    most = 1
    for item in group:
        module, handler = item.dep.target.module, item.dep.handler
        if not isinstance(module, nn.Module) or (isinstance(module, nn.Conv2d) and module.groups == module.out_channels):
            continue
        pruner = graph.get_pruner_of_module(module)
        if pruner is None:
            continue
        if graph.is_out_channel_pruning_fn(handler):
            most = max(most, pruner.get_out_channel_groups(module))
        elif graph.is_in_channel_pruning_fn(handler):
            most = max(most, pruner.get_in_channel_groups(module))
    return most


def replay(model: nn.Module, input_shape: tuple[int, ...], records: list[GroupRecord],
           after_each: Callable[[nn.Module, GroupRecord], None]) -> nn.Module:
    """Apply ``records`` to a copy of ``model`` one group at a time, calling ``after_each`` after every group."""
    candidate = copy.deepcopy(model)
    modules = dict(candidate.named_modules())
    graph = dependency_graph(candidate, input_shape)
    for record in records:
        module = modules[record.layer]
        pruner = graph.get_pruner_of_module(module)
        handler = pruner.prune_out_channels if record.outputs else pruner.prune_in_channels
        graph.get_pruning_group(module, handler, list(record.indices)).prune()
        after_each(candidate, record)
    return candidate


def find_breaking_group(model: nn.Module, input_shape: tuple[int, ...], records: list[GroupRecord],
                        check: Callable[[nn.Module], None]) -> tuple[GroupRecord, Exception] | None:
    """The first group of a pruning step after which ``check`` (which raises on a broken model) fails,
    with the error; None when no single prefix of the step breaks it."""
    def checked(candidate: nn.Module, record: GroupRecord) -> None:
        try:
            check(candidate)
        except Exception as exc:
            raise _Broken(record, exc) from exc

    try:
        replay(model, input_shape, records, checked)
    except _Broken as broken:
        return broken.record, broken.error
    return None


class _Broken(Exception):
    def __init__(self, record: GroupRecord, error: Exception):
        super().__init__(str(error))
        self.record, self.error = record, error


def _copy_with_gradients(model: nn.Module) -> nn.Module:
    """deepcopy drops .grad; Taylor importance needs it on the copy."""
    candidate = copy.deepcopy(model)
    for source, target in zip(model.parameters(), candidate.parameters()):
        if source.grad is not None:
            target.grad = source.grad.detach().clone()
    return candidate


def magnitude_prune(model: nn.Module, sparsity: float, protected: tuple[str, ...] = ()) -> dict:
    """Unstructured pruning in place: zero the ``sparsity`` share of all Conv/Linear weights with the
    smallest magnitude, ranked together (one global threshold), except protected layers. The zeros are
    held by torch.nn.utils.prune masks (so a fine-tune keeps them) until ``make_permanent``."""
    from torch.nn.utils import prune as torch_prune

    layers = [(m, "weight") for name, m in model.named_modules() if isinstance(m, ROOT_TYPES) and name not in protected]
    if not layers:
        raise CompressError("no unprotected Conv2d or Linear layer to prune")
    already = sum(int((getattr(m, "weight_mask", torch.ones(0)) == 0).sum()) for m, _ in layers)
    total = sum(m.weight.numel() for m, _ in layers)
    # torch's amount is a share of the weights not yet pruned
    step = (sparsity * total - already) / max(total - already, 1)
    if step > 0:
        torch_prune.global_unstructured(layers, pruning_method=torch_prune.L1Unstructured, amount=float(step))
    magnitudes = torch.cat([(getattr(m, "weight_orig", m.weight) * getattr(m, "weight_mask", 1)).detach().abs().flatten()
                            for m, _ in layers])
    kept = magnitudes[magnitudes > 0]
    return {"layers": len(layers), "threshold": float(kept.min()) if len(kept) else 0.0}


def permanent_copy(model: nn.Module) -> nn.Module:
    """A copy of a model under torch.nn.utils.prune masks with the masks folded in. (deepcopy cannot copy
    the masked ``weight``, a tensor computed from ``weight_orig``; each forward recomputes it anyway.)"""
    masked = {m: m.weight for m in model.modules() if hasattr(m, "weight_mask") and hasattr(m, "weight_orig")}
    for module in masked:
        del module.weight
    try:
        candidate = copy.deepcopy(model)
    finally:
        for module, weight in masked.items():
            module.weight = weight
    make_permanent(candidate)
    return candidate


def make_permanent(model: nn.Module) -> None:
    """Fold torch.nn.utils.prune masks into the weights (plain tensors with zeros, no hooks)."""
    from torch.nn.utils import prune as torch_prune

    for module in model.modules():
        if torch_prune.is_pruned(module) and hasattr(module, "weight_mask"):
            torch_prune.remove(module, "weight")


def weight_sparsity(model: nn.Module, exclude: tuple[str, ...] = ()) -> dict:
    """Zero weights of the Conv/Linear layers (except ``exclude``): count, total and share."""
    zeros = total = 0
    for name, module in model.named_modules():
        if isinstance(module, ROOT_TYPES) and name not in exclude:
            weight = module.weight.detach()
            zeros += int((weight == 0).sum())
            total += weight.numel()
    return {"zero_weights": zeros, "weights": total, "sparsity": zeros / total if total else 0.0}
