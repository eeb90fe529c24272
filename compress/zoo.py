"""Model zoo written here (no torchvision for this torch): MLP, ResNet-style and MobileNet-style CNNs.

Every model takes an NCHW float image batch and returns logits. ``width`` scales every hidden
width, so a student is the teacher's architecture at a smaller width (and possibly depth).
"""
from __future__ import annotations

import importlib
import warnings
import zipfile
from dataclasses import dataclass
from pathlib import Path

import torch
from torch import nn

from compress.errors import CompressError

ARCHITECTURES = ("mlp", "resnet", "mobilenet")


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


@dataclass(frozen=True)
class ModelSpec:
    """What to build: an architecture from the zoo at a width multiplier and depth."""

    arch: str = "resnet"
    width: float = 1.0
    depth: int | None = None  # resnet: 6n+2 layers (default 14); mobilenet: blocks (default 8); mlp: ignored

    def __post_init__(self) -> None:
        if self.arch not in ARCHITECTURES:
            raise ValueError(f"unknown architecture {self.arch!r}: choose one of {', '.join(ARCHITECTURES)}")
        if not self.width > 0:
            raise ValueError(f"width must be > 0, got {self.width}")


def build_model(spec: ModelSpec, input_shape: tuple[int, ...], num_classes: int) -> nn.Module:
    """Build ``spec`` for inputs of shape ``input_shape`` (C, H, W) and ``num_classes`` outputs."""
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
    return MobileNet(in_channels, num_classes, spec.width, spec.depth or 8)


def load_factory_model(factory: str, state_dict_path: str | Path | None) -> nn.Module:
    """A user's own model: ``package.module:function`` returning an nn.Module, plus an optional state_dict."""
    module_name, _, function_name = factory.partition(":")
    if not module_name or not function_name:
        raise CompressError(f"teacher factory must look like 'package.module:function', got {factory!r}")
    try:
        builder = getattr(importlib.import_module(module_name), function_name)
    except (ImportError, AttributeError) as exc:
        raise CompressError(f"cannot import teacher factory {factory!r}: {exc}") from exc
    model = builder()
    if not isinstance(model, nn.Module):
        raise CompressError(f"teacher factory {factory!r} returned {type(model).__name__}, not a torch.nn.Module")
    if state_dict_path is not None:
        state = torch.load(_existing(state_dict_path), map_location="cpu", weights_only=True)
        try:
            model.load_state_dict(state)
        except RuntimeError as exc:
            first_line = str(exc).strip().splitlines()[0]
            raise CompressError(f"state_dict {state_dict_path} does not match the model from {factory}: {first_line}") from exc
    return model


def save_model(model: nn.Module, path: Path) -> None:
    """Save a whole module (pruned models have no builder spec, so the module itself is pickled)."""
    from compress.fsutil import atomic_path

    with atomic_path(path) as tmp:
        if isinstance(model, torch.jit.ScriptModule):
            torch.jit.save(model, str(tmp))
        else:
            torch.save(model, tmp)


def load_model(path: str | Path) -> nn.Module:
    """Load a model saved by ``save_model`` or a TorchScript file; always in eval mode on CPU."""
    path = _existing(path)
    try:
        if _is_torchscript(path):
            with warnings.catch_warnings():
                warnings.simplefilter("ignore", DeprecationWarning)  # torch.jit.load is deprecated, still supported
                model = torch.jit.load(str(path), map_location="cpu")
        else:
            model = torch.load(path, map_location="cpu", weights_only=False)
    except Exception as exc:  # torch raises many types for a bad pickle/zip
        reason = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise CompressError(f"{path} is not a model saved by compress nor a TorchScript file ({reason})") from exc
    if not isinstance(model, nn.Module):
        raise CompressError(f"{path} holds a {type(model).__name__}, not a model; for a state_dict pass a factory too")
    return model.eval()


def _is_torchscript(path: Path) -> bool:
    """TorchScript archives carry the model's code in a code/ folder; torch.save archives do not."""
    try:
        with zipfile.ZipFile(path) as archive:
            return any("/code/" in name for name in archive.namelist())
    except zipfile.BadZipFile:
        return False


def _existing(path: str | Path) -> Path:
    path = Path(path)
    if not path.is_file():
        raise CompressError(f"file not found: {path}")
    return path
