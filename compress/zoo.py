"""Model zoo written here (no torchvision for this torch): MLP, ResNet-style and MobileNet-style CNNs,
ResNeXt (grouped convs, GroupNorm), DenseNet/Inception (concatenation), SE-ResNet and a small ViT.

Every model takes an NCHW float image batch and returns logits. ``width`` scales every hidden
width, so a student is the teacher's architecture at a smaller width (and possibly depth).
"""
from __future__ import annotations

import importlib
import inspect
from collections.abc import Callable
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from compress.errors import CompressError

ARCHITECTURES = ("mlp", "resnet", "mobilenet", "resnext", "densenet", "senet", "vit")
# Published families, re-implemented in compress.architectures (built by name; see docs/architectures.md)
FAMILIES = ("resnet18", "resnet50", "mobilenet_v3", "efficientnet_b0", "convnext", "regnet_x", "ghostnet",
            "densenet121", "repvgg", "repvgg_deploy", "vit_tiny", "mobilevit")


def scaled(channels: int, width: float) -> int:
    return max(1, int(round(channels * width)))


class MLP(nn.Module):
    """Flatten -> Linear/ReLU blocks -> classifier. Base hidden sizes 128-64 (the seeds' teacher)."""

    def __init__(self, in_features: int, num_classes: int, width: float = 1.0, hidden: tuple[int, ...] = (128, 64)):
        super().__init__()
        layers: list[nn.Module] = [nn.Flatten()]
        prev = in_features
        for size in hidden:
            layers += [nn.Linear(prev, scaled(size, width)), nn.ReLU(inplace=True)]
            prev = scaled(size, width)
        self.features = nn.Sequential(*layers)
        self.classifier = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.features(x))


class BasicBlock(nn.Module):
    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__()
        self.conv1 = nn.Conv2d(in_ch, out_ch, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(out_ch)
        self.conv2 = nn.Conv2d(out_ch, out_ch, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(out_ch)
        self.relu = nn.ReLU(inplace=True)
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.BatchNorm2d(out_ch))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + self.shortcut(x))


class ResNet(nn.Module):
    """CIFAR-style ResNet (He et al. 2016): depth = 6n + 2, three stages of n basic blocks at
    widths (w, 2w, 4w) with strides (1, 2, 2). Base w = 32; depth 14 at width 1.0 is ~80 MMACs on 28x28."""

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0, depth: int = 14, base: int = 32):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise CompressError(f"resnet depth must be 6n+2 with n >= 1 (8, 14, 20, ... 56), got {depth}")
        blocks_per_stage = (depth - 2) // 6
        widths = [scaled(base * m, width) for m in (1, 2, 4)]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        stages: list[nn.Module] = []
        prev = widths[0]
        for stage_index, stage_width in enumerate(widths):
            blocks = []
            for block_index in range(blocks_per_stage):
                stride = 2 if stage_index > 0 and block_index == 0 else 1
                blocks.append(BasicBlock(prev, stage_width, stride))
                prev = stage_width
            stages.append(nn.Sequential(*blocks))
        self.stages = nn.Sequential(*stages)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(prev, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.stages(self.stem(x))))


class InvertedResidual(nn.Module):
    """MobileNetV2 block: 1x1 expand -> 3x3 depthwise -> 1x1 project, residual when shapes match."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, expand: int):
        super().__init__()
        hidden = in_ch * expand
        self.use_residual = stride == 1 and in_ch == out_ch
        self.block = nn.Sequential(
            nn.Conv2d(in_ch, hidden, 1, bias=False), nn.BatchNorm2d(hidden), nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, hidden, 3, stride, 1, groups=hidden, bias=False), nn.BatchNorm2d(hidden),
            nn.ReLU6(inplace=True),
            nn.Conv2d(hidden, out_ch, 1, bias=False), nn.BatchNorm2d(out_ch),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_residual else out


class MobileNet(nn.Module):
    """MobileNetV2-style network for small images: stem, inverted residual blocks with depthwise
    convs, 1x1 head, global pool, classifier. ``depth`` is the number of inverted residual blocks."""

    # (output channels at width 1.0, stride) per block; repeated blocks keep shapes, so they get residuals
    PLAN = ((16, 1), (24, 2), (24, 1), (32, 2), (32, 1), (64, 1), (64, 1), (96, 1))

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0, depth: int = 8, expand: int = 4):
        super().__init__()
        if not 1 <= depth <= len(self.PLAN):
            raise CompressError(f"mobilenet depth must be 1..{len(self.PLAN)}, got {depth}")
        stem = scaled(16, width)
        self.stem = nn.Sequential(nn.Conv2d(in_channels, stem, 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(stem), nn.ReLU6(inplace=True))
        blocks, prev = [], stem
        for channels, stride in self.PLAN[:depth]:
            blocks.append(InvertedResidual(prev, scaled(channels, width), stride, expand))
            prev = scaled(channels, width)
        self.blocks = nn.Sequential(*blocks)
        head = scaled(128, width)
        self.head = nn.Sequential(nn.Conv2d(prev, head, 1, bias=False), nn.BatchNorm2d(head), nn.ReLU6(inplace=True),
                                  nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.blocks(self.stem(x))))


class ResNeXtBlock(nn.Module):
    """ResNeXt block (Xie et al. 2017) with GroupNorm: 1x1 reduce -> grouped 3x3 (``cardinality`` groups)
    -> 1x1 expand, added to the shortcut. Channel counts stay multiples of the group counts."""

    def __init__(self, in_ch: int, out_ch: int, stride: int, cardinality: int, norm_groups: int):
        super().__init__()
        inner = out_ch  # bottleneck width = block width, split into `cardinality` groups
        self.body = nn.Sequential(
            nn.Conv2d(in_ch, inner, 1, bias=False), nn.GroupNorm(norm_groups, inner), nn.ReLU(inplace=True),
            nn.Conv2d(inner, inner, 3, stride, 1, groups=cardinality, bias=False), nn.GroupNorm(norm_groups, inner),
            nn.ReLU(inplace=True),
            nn.Conv2d(inner, out_ch, 1, bias=False), nn.GroupNorm(norm_groups, out_ch),
        )
        self.shortcut: nn.Module = nn.Identity()
        if stride != 1 or in_ch != out_ch:
            self.shortcut = nn.Sequential(nn.Conv2d(in_ch, out_ch, 1, stride, bias=False), nn.GroupNorm(norm_groups, out_ch))
        self.relu = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.relu(self.body(x) + self.shortcut(x))


def stage_blocks(widths: list[int], depth: int, make_block: Callable[[int, int, int], nn.Module]) -> nn.Sequential:
    """``depth`` blocks per stage width, made by ``make_block(in_channels, out_channels, stride)``; the first
    block of every stage after the first halves the resolution."""
    blocks: list[nn.Module] = []
    previous = widths[0]
    for stage_index, stage_width in enumerate(widths):
        for block_index in range(depth):
            blocks.append(make_block(previous, stage_width, 2 if stage_index > 0 and block_index == 0 else 1))
            previous = stage_width
    return nn.Sequential(*blocks)


class ResNeXt(nn.Module):
    """ResNeXt-style CNN with grouped convolutions and GroupNorm: stem, three stages of ``depth`` blocks
    at widths (32w, 64w, 128w) with strides (1, 2, 2), global pool, classifier."""

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0, depth: int = 1, cardinality: int = 4):
        super().__init__()
        # widths are multiples of 2 * cardinality so every grouped conv and GroupNorm divides them evenly
        unit = 2 * cardinality
        widths = [max(unit, int(round(base * width / unit)) * unit) for base in (32, 64, 128)]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.GroupNorm(cardinality, widths[0]), nn.ReLU(inplace=True))
        self.blocks = stage_blocks(widths, depth,
                                   lambda cin, cout, stride: ResNeXtBlock(cin, cout, stride, cardinality, cardinality))
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.blocks(self.stem(x))))


class DenseLayer(nn.Module):
    """DenseNet-BC layer: BN-ReLU-1x1 conv (4k) -> BN-ReLU-3x3 conv (k), concatenated onto its input."""

    def __init__(self, in_ch: int, growth: int):
        super().__init__()
        self.body = nn.Sequential(
            nn.BatchNorm2d(in_ch), nn.ReLU(inplace=True), nn.Conv2d(in_ch, 4 * growth, 1, bias=False),
            nn.BatchNorm2d(4 * growth), nn.ReLU(inplace=True), nn.Conv2d(4 * growth, growth, 3, 1, 1, bias=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.body(x)], dim=1)


class InceptionBranches(nn.Module):
    """Inception-style module: 1x1, 1x1->3x3 and pool->1x1 branches concatenated along channels."""

    def __init__(self, in_ch: int, branch: int):
        super().__init__()
        self.branch1 = nn.Sequential(nn.Conv2d(in_ch, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU(inplace=True))
        self.branch3 = nn.Sequential(nn.Conv2d(in_ch, branch, 1, bias=False), nn.BatchNorm2d(branch), nn.ReLU(inplace=True),
                                     nn.Conv2d(branch, branch, 3, 1, 1, bias=False), nn.BatchNorm2d(branch),
                                     nn.ReLU(inplace=True))
        self.branch_pool = nn.Sequential(nn.MaxPool2d(3, 1, 1), nn.Conv2d(in_ch, branch, 1, bias=False),
                                         nn.BatchNorm2d(branch), nn.ReLU(inplace=True))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([self.branch1(x), self.branch3(x), self.branch_pool(x)], dim=1)


class DenseNet(nn.Module):
    """DenseNet-BC-style CNN (Huang et al. 2017) with channel concatenation everywhere: an Inception-style
    stem, two dense blocks of ``depth`` layers (growth 12w) joined by a 1x1 transition that halves the
    channels and the resolution, then a 2x2 pool flattened into a hidden Linear layer and the classifier."""

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0, depth: int = 3):
        super().__init__()
        growth = scaled(12, width)
        stem_branch = scaled(8, width)
        self.stem = InceptionBranches(in_channels, stem_branch)
        channels = 3 * stem_branch
        layers: list[nn.Module] = []
        for block in range(2):
            for _ in range(depth):
                layers.append(DenseLayer(channels, growth))
                channels += growth
            if block == 0:
                reduced = max(1, channels // 2)
                layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.Conv2d(channels, reduced, 1, bias=False),
                           nn.AvgPool2d(2)]
                channels = reduced
        layers += [nn.BatchNorm2d(channels), nn.ReLU(inplace=True)]
        self.features = nn.Sequential(*layers)
        hidden = scaled(64, width)
        # Flatten of a 2x2 map: each channel feeds 4 inputs of the Linear, which pruning must keep in step
        self.head = nn.Sequential(nn.AdaptiveAvgPool2d(2), nn.Flatten(), nn.Linear(channels * 4, hidden),
                                  nn.ReLU(inplace=True))
        self.classifier = nn.Linear(hidden, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.head(self.features(self.stem(x))))


class SqueezeExcite(nn.Module):
    """Squeeze-and-excitation (Hu et al. 2018): channel weights from a pooled two-layer bottleneck."""

    def __init__(self, channels: int, reduction: int = 4):
        super().__init__()
        hidden = max(1, channels // reduction)
        self.gate = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Conv2d(channels, hidden, 1), nn.ReLU(inplace=True),
                                  nn.Conv2d(hidden, channels, 1), nn.Sigmoid())

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.gate(x)


class SEBlock(BasicBlock):
    """ResNet basic block whose residual branch is rescaled by squeeze-and-excitation before the add."""

    def __init__(self, in_ch: int, out_ch: int, stride: int):
        super().__init__(in_ch, out_ch, stride)
        self.se = SqueezeExcite(out_ch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.se(self.bn2(self.conv2(out)))
        return self.relu(out + self.shortcut(x))


class SENet(nn.Module):
    """SE-ResNet: the CIFAR-style ResNet with squeeze-and-excitation in every block; ``depth`` blocks per
    stage at widths (32w, 64w, 128w)."""

    def __init__(self, in_channels: int, num_classes: int, width: float = 1.0, depth: int = 1):
        super().__init__()
        widths = [scaled(base, width) for base in (32, 64, 128)]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, widths[0], 3, 1, 1, bias=False),
                                  nn.BatchNorm2d(widths[0]), nn.ReLU(inplace=True))
        self.blocks = stage_blocks(widths, depth, SEBlock)
        self.pool = nn.Sequential(nn.AdaptiveAvgPool2d(1), nn.Flatten())
        self.classifier = nn.Linear(widths[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(self.pool(self.blocks(self.stem(x))))


class Attention(nn.Module):
    """Multi-head self-attention with one fused ``qkv`` projection. The head count is read from the
    weights (``qkv.out_features // (3 * head_dim)``), so removing whole heads needs no attribute update;
    compress.pruning prunes heads of any module with a ``qkv`` Linear and a ``head_dim``."""

    def __init__(self, dim: int, num_heads: int):
        super().__init__()
        self.head_dim = dim // num_heads
        self.qkv = nn.Linear(dim, 3 * num_heads * self.head_dim)
        self.proj = nn.Linear(num_heads * self.head_dim, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        batch, tokens, _ = x.shape
        heads = self.qkv.out_features // (3 * self.head_dim)
        qkv = self.qkv(x).reshape(batch, tokens, 3, heads, self.head_dim).permute(2, 0, 3, 1, 4)
        q, k, v = qkv.unbind(0)
        attention = (q * self.head_dim ** -0.5) @ k.transpose(-2, -1)
        out = (attention.softmax(dim=-1) @ v).transpose(1, 2).reshape(batch, tokens, heads * self.head_dim)
        return self.proj(out)


class TransformerBlock(nn.Module):
    """Pre-norm transformer encoder block: x + attn(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, dim: int, num_heads: int, mlp_ratio: int):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim)
        self.attn = Attention(dim, num_heads)
        self.norm2 = nn.LayerNorm(dim)
        self.mlp = nn.Sequential(nn.Linear(dim, dim * mlp_ratio), nn.GELU(), nn.Linear(dim * mlp_ratio, dim))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """A small ViT (Dosovitskiy et al. 2021): non-overlapping patches (side // 7 pixels, so 28x28 gives
    7x7 tokens) embedded by a strided conv, a class token and learned position embeddings, ``depth``
    pre-norm blocks of 4 heads (head size 16w) with MLP ratio 2, then LayerNorm and the classifier on the
    class token."""

    def __init__(self, input_shape: tuple[int, ...], num_classes: int, width: float = 1.0, depth: int = 4,
                 num_heads: int = 4, mlp_ratio: int = 2):
        super().__init__()
        channels, height, width_px = input_shape
        patch = max(1, min(height, width_px) // 7)
        tokens = (height // patch) * (width_px // patch)
        dim = num_heads * scaled(16, width)
        self.patch_embed = nn.Conv2d(channels, dim, patch, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[TransformerBlock(dim, num_heads, mlp_ratio) for _ in range(depth)])
        self.norm = nn.LayerNorm(dim)
        self.classifier = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x).flatten(2).transpose(1, 2)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        x = self.norm(self.blocks(x))
        return self.classifier(x[:, 0])


@dataclass(frozen=True)
class ModelSpec:
    """What to build: an architecture from the zoo at a width multiplier and depth."""

    arch: str = "resnet"
    width: float = 1.0
    # resnet: 6n+2 layers (default 14); mobilenet: blocks (default 8); resnext, senet: blocks per stage (default 1);
    # densenet: layers per dense block (default 3); vit: transformer blocks (default 4); mlp: ignored;
    # the published FAMILIES: at most this many blocks per stage (default: the published counts)
    depth: int | None = None

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES + FAMILIES:
            raise ValueError(f"unknown architecture {self.arch!r}: choose one of {', '.join(ARCHITECTURES + FAMILIES)}")
        if not self.width > 0:
            raise ValueError(f"width must be > 0, got {self.width}")


def build_model(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build ``spec`` for inputs of shape ``input_shape`` (C, H, W) and ``num_classes`` outputs; the model
    carries the spec it was built from (``compress_spec``), which its checkpoint stores instead of code."""
    model = _build(spec, tuple(input_shape), num_classes)
    model.compress_spec = {"builder": "zoo", "model": asdict(spec), "input_shape": list(input_shape),
                           "num_classes": num_classes}
    return model


def _build(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    if spec.arch in FAMILIES:
        from compress.architectures import build_family  # it imports this module's Attention

        return build_family(spec.arch, input_shape, num_classes, spec.width, spec.depth)
    in_channels = input_shape[0]
    if spec.arch == "mlp":
        in_features = 1
        for dim in input_shape:
            in_features *= dim
        return MLP(in_features, num_classes, spec.width)
    if len(input_shape) != 3:
        raise CompressError(f"{spec.arch} needs image inputs (C, H, W), got per-sample shape {input_shape}: use arch=mlp")
    if spec.arch == "resnet":
        return ResNet(in_channels, num_classes, spec.width, spec.depth or 14)
    if spec.arch == "resnext":
        return ResNeXt(in_channels, num_classes, spec.width, spec.depth or 1)
    if spec.arch == "densenet":
        return DenseNet(in_channels, num_classes, spec.width, spec.depth or 3)
    if spec.arch == "senet":
        return SENet(in_channels, num_classes, spec.width, spec.depth or 1)
    if spec.arch == "vit":
        return VisionTransformer(tuple(input_shape), num_classes, spec.width, spec.depth or 4)
    return MobileNet(in_channels, num_classes, spec.width, spec.depth or 8)


def call_factory(factory: str) -> nn.Module:
    """A user's own model: ``package.module:function`` called with no arguments, returning an nn.Module."""
    module_name, _, function_name = factory.partition(":")
    if not module_name or not function_name:
        raise CompressError(f"teacher factory must look like 'package.module:function', got {factory!r}")
    try:
        builder = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise CompressError(f"cannot import teacher factory {factory!r}: {exc}") from exc
    # Only code written in Python: a builtin (os:system, os:abort, builtins:exec) is never a model builder.
    if not (inspect.isfunction(builder) or (inspect.isclass(builder) and issubclass(builder, nn.Module))):
        raise CompressError(f"teacher factory {factory!r} is a {type(builder).__name__}, not a Python function or class: "
                            "give the function (or nn.Module class) that builds your model, as 'package.module:function'")
    try:
        model = builder()
    except Exception as exc:  # the user's code may raise anything
        raise CompressError(f"teacher factory {factory!r} failed when called with no arguments "
                            f"({type(exc).__name__}: {str(exc).strip()[:200]}): it must build and return the model") from exc
    if not isinstance(model, nn.Module):
        raise CompressError(f"teacher factory {factory!r} returned {type(model).__name__}, not a torch.nn.Module")
    model.compress_spec = {"builder": "factory", "factory": factory}
    return model


def load_factory_model(factory: str, state_dict_path: str | Path | None) -> nn.Module:
    """A user's own model from its factory, with the weights of a state_dict file (safetensors or torch.save)."""
    from compress.checkpoint import read_state_dict

    model = call_factory(factory)
    if state_dict_path is not None:
        state = read_state_dict(state_dict_path)
        problem = _state_dict_mismatch(model, state)
        if problem:
            raise CompressError(f"state_dict {state_dict_path} does not match the model from {factory}: {problem}")
        model.load_state_dict(state)
    return model


def _state_dict_mismatch(model: nn.Module, state: dict) -> str:
    """What differs between ``model``'s parameters/buffers and ``state``, in one line ('' when they match)."""
    expected = model.state_dict()
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    shapes = [f"{k} is {tuple(state[k].shape)} in the file but {tuple(expected[k].shape)} in the model"
              for k in expected if k in state and state[k].shape != expected[k].shape]
    parts = []
    if missing:
        parts.append(f"{len(missing)} missing key(s) ({', '.join(missing[:3])}{', ...' if len(missing) > 3 else ''})")
    if unexpected:
        parts.append(f"{len(unexpected)} unexpected key(s) ({', '.join(unexpected[:3])}{', ...' if len(unexpected) > 3 else ''})")
    if shapes:
        parts.append(f"{len(shapes)} shape mismatch(es): {shapes[0]}")
    return "; ".join(parts)


def check_fits_data(model: nn.Module, data, what: str) -> None:
    """``model`` must map a real batch of ``data`` to one logit per class: say so in one line before a stage
    trains or exports a model made for other data (a shape error deep in a layer names no file)."""
    from compress.errors import first_line

    batch = torch.from_numpy(data.val.x[:2])
    shape = ", ".join(str(n) for n in data.input_shape)
    try:
        with torch.no_grad():
            logits = model.eval()(batch)
    except Exception as exc:  # a forward pass can raise anything on inputs of the wrong shape
        raise CompressError(f"{what} does not take the inputs of dataset {data.name} ([N, {shape}]): {first_line(exc, 160)}; "
                            "give the data the model was made for (--data, data.image_size)") from exc
    if not isinstance(logits, torch.Tensor) or logits.ndim != 2 or logits.shape[1] != data.num_classes:
        found = tuple(logits.shape) if isinstance(logits, torch.Tensor) else type(logits).__name__
        raise CompressError(f"{what} outputs {found} for a batch of dataset {data.name}, which has {data.num_classes} "
                            "classes: give the data the model was made for (--data)")
