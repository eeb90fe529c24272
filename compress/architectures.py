"""Image-classification families people ship, re-implemented here (torchvision does not work with this
torch, and it is not vendored): ResNet-18/50 (torchvision layout), MobileNetV3-Large, EfficientNet-B0,
ConvNeXt-Tiny, RegNetX-400MF, GhostNet, DenseNet-121, RepVGG-A0 (training and deploy forms), ViT-Ti/16
(timm layout) and MobileViT-S.

Every builder takes ``(in_channels, num_classes, width, depth, image_size)``: ``width`` multiplies every
channel count (1.0 is the published model), ``depth`` caps the blocks of each stage (None: the published
count), so tests can build the same structure in a fraction of the size. Published strides are kept, so
a 32x32 input ends on a 1x1 map, as it does in those models.
"""
from __future__ import annotations

import copy
import math
from collections import OrderedDict
from collections.abc import Callable

import torch
import torch.nn.functional as F
from torch import nn

from compress.errors import CompressError
from compress.zoo import Attention


def make_divisible(value: float, divisor: int = 8) -> int:
    """torchvision's _make_divisible: the nearest multiple of ``divisor``, never 10% below ``value``."""
    result = max(divisor, int(value + divisor / 2) // divisor * divisor)
    return result + divisor if result < 0.9 * value else result


def _capped(count: int, depth: int | None) -> int:
    return count if depth is None else max(1, min(count, depth))


def _strided_stages(cin: int, widths: tuple[int, ...] | list[int], counts: tuple[int, ...], depth: int | None,
                    block: Callable[[int, int, int], nn.Module]) -> tuple[list[nn.Sequential], int]:
    """One nn.Sequential per stage: ``counts[i]`` blocks (capped by ``depth``) to ``widths[i]`` channels, built by
    ``block(cin, cout, stride)`` with stride 2 for the first of each stage; returns them and the last width."""
    stages = []
    for cout, count in zip(widths, counts):
        blocks = []
        for index in range(_capped(count, depth)):
            blocks.append(block(cin, cout, 2 if index == 0 else 1))
            cin = cout
        stages.append(nn.Sequential(*blocks))
    return stages, cin


def conv_bn(cin: int, cout: int, kernel: int, stride: int = 1, groups: int = 1,
            activation: Callable[[], nn.Module] | None = None) -> nn.Sequential:
    layers: list[nn.Module] = [nn.Conv2d(cin, cout, kernel, stride, kernel // 2, groups=groups, bias=False),
                               nn.BatchNorm2d(cout)]
    if activation is not None:
        layers.append(activation())
    return nn.Sequential(*layers)


# ---- ResNet-18/50 (He et al. 2016, torchvision layout) -------------------------------------------

class BasicBlock(nn.Module):
    expansion = 1

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 3, stride, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(planes, planes, 3, 1, 1, bias=False)
        self.bn2 = nn.BatchNorm2d(planes)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        return self.relu(self.bn2(self.conv2(out)) + identity)


class Bottleneck(nn.Module):
    expansion = 4

    def __init__(self, inplanes: int, planes: int, stride: int, downsample: nn.Module | None):
        super().__init__()
        self.conv1 = nn.Conv2d(inplanes, planes, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(planes)
        self.conv2 = nn.Conv2d(planes, planes, 3, stride, 1, bias=False)  # stride on the 3x3 (ResNet v1.5)
        self.bn2 = nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        return self.relu(self.bn3(self.conv3(out)) + identity)


class TorchvisionResNet(nn.Module):
    """conv1 7x7/2, maxpool, layer1..4 (strides 1, 2, 2, 2), avgpool, fc: torchvision's module names."""

    def __init__(self, block: type, layers: tuple[int, ...], in_channels: int, num_classes: int, width: float,
                 depth: int | None):
        super().__init__()
        self.inplanes = max(8, int(round(64 * width)))
        self.conv1 = nn.Conv2d(in_channels, self.inplanes, 7, 2, 3, bias=False)
        self.bn1 = nn.BatchNorm2d(self.inplanes)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, 2, 1)
        stages = []
        for index, blocks in enumerate(layers):
            planes = max(8, int(round(64 * 2 ** index * width)))
            stages.append(self._make_layer(block, planes, _capped(blocks, depth), 1 if index == 0 else 2))
        self.layer1, self.layer2, self.layer3, self.layer4 = stages
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(self.inplanes, num_classes)

    def _make_layer(self, block: type, planes: int, blocks: int, stride: int) -> nn.Sequential:
        downsample = None
        if stride != 1 or self.inplanes != planes * block.expansion:
            downsample = nn.Sequential(nn.Conv2d(self.inplanes, planes * block.expansion, 1, stride, bias=False),
                                       nn.BatchNorm2d(planes * block.expansion))
        layers = [block(self.inplanes, planes, stride, downsample)]
        self.inplanes = planes * block.expansion
        layers += [block(self.inplanes, planes, 1, None) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def resnet18(in_channels, num_classes, width=1.0, depth=None, image_size=224):
    return TorchvisionResNet(BasicBlock, (2, 2, 2, 2), in_channels, num_classes, width, depth)


def resnet50(in_channels, num_classes, width=1.0, depth=None, image_size=224):
    return TorchvisionResNet(Bottleneck, (3, 4, 6, 3), in_channels, num_classes, width, depth)


# ---- MobileNetV3-Large (Howard et al. 2019) ------------------------------------------------------

class SqueezeExcitation(nn.Module):
    """Pooled bottleneck gate: fc1 -> activation -> fc2 -> gate (hard-sigmoid in MobileNetV3 and GhostNet,
    sigmoid in EfficientNet), multiplied onto the input."""

    def __init__(self, channels: int, squeeze: int, activation: Callable[[], nn.Module], gate: Callable[[], nn.Module]):
        super().__init__()
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc1 = nn.Conv2d(channels, squeeze, 1)
        self.activation = activation()
        self.fc2 = nn.Conv2d(squeeze, channels, 1)
        self.scale_activation = gate()

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        scale = self.scale_activation(self.fc2(self.activation(self.fc1(self.avgpool(x)))))
        return x * scale


class MobileNetV3Block(nn.Module):
    def __init__(self, cin: int, kernel: int, expanded: int, cout: int, se: bool, hard_swish: bool, stride: int):
        super().__init__()
        act = nn.Hardswish if hard_swish else nn.ReLU
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expanded != cin:
            layers.append(conv_bn(cin, expanded, 1, activation=act))
        layers.append(conv_bn(expanded, expanded, kernel, stride, groups=expanded, activation=act))
        if se:
            layers.append(SqueezeExcitation(expanded, make_divisible(expanded // 4), nn.ReLU, nn.Hardsigmoid))
        layers.append(conv_bn(expanded, cout, 1))
        self.block = nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return out + x if self.use_res_connect else out


# kernel, expanded, out, SE, hard-swish, stride (torchvision's mobilenet_v3_large)
MOBILENET_V3_LARGE = ((3, 16, 16, False, False, 1), (3, 64, 24, False, False, 2), (3, 72, 24, False, False, 1),
                      (5, 72, 40, True, False, 2), (5, 120, 40, True, False, 1), (5, 120, 40, True, False, 1),
                      (3, 240, 80, False, True, 2), (3, 200, 80, False, True, 1), (3, 184, 80, False, True, 1),
                      (3, 184, 80, False, True, 1), (3, 480, 112, True, True, 1), (3, 672, 112, True, True, 1),
                      (5, 672, 160, True, True, 2), (5, 960, 160, True, True, 1), (5, 960, 160, True, True, 1))


def _capped_plan(plan: tuple, depth: int | None, out_index: int) -> list:
    """The first ``depth`` rows of every run of rows with the same output width (a stage)."""
    rows, run, previous = [], 0, None
    for row in plan:
        run = run + 1 if row[out_index] == previous else 1
        previous = row[out_index]
        if depth is None or run <= depth:
            rows.append(row)
    return rows


class MobileNetV3(nn.Module):
    def __init__(self, in_channels, num_classes, width=1.0, depth=None, image_size=224):
        super().__init__()
        stem = make_divisible(16 * width)
        layers: list[nn.Module] = [conv_bn(in_channels, stem, 3, 2, activation=nn.Hardswish)]
        previous = stem
        for kernel, expanded, out, se, hs, stride in _capped_plan(MOBILENET_V3_LARGE, depth, 2):
            cout = make_divisible(out * width)
            layers.append(MobileNetV3Block(previous, kernel, make_divisible(expanded * width), cout, se, hs, stride))
            previous = cout
        last = 6 * previous
        layers.append(conv_bn(previous, last, 1, activation=nn.Hardswish))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        head = make_divisible(1280 * width)
        self.classifier = nn.Sequential(nn.Linear(last, head), nn.Hardswish(), nn.Dropout(0.2),
                                        nn.Linear(head, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# ---- EfficientNet-B0 (Tan & Le 2019) -------------------------------------------------------------

class StochasticDepth(nn.Module):
    """Drops the residual branch of whole samples with probability ``p`` in training (torchvision 'row')."""

    def __init__(self, p: float):
        super().__init__()
        self.p = p

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if not self.training or self.p == 0.0:
            return x
        keep = 1.0 - self.p
        mask = torch.empty((x.shape[0],) + (1,) * (x.dim() - 1), dtype=x.dtype, device=x.device).bernoulli_(keep)
        return x * mask / keep


class MBConv(nn.Module):
    def __init__(self, cin: int, cout: int, expand: int, kernel: int, stride: int, drop: float):
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        layers: list[nn.Module] = []
        if expand != 1:
            layers.append(conv_bn(cin, hidden, 1, activation=nn.SiLU))
        layers += [conv_bn(hidden, hidden, kernel, stride, groups=hidden, activation=nn.SiLU),
                   SqueezeExcitation(hidden, max(1, cin // 4), nn.SiLU, nn.Sigmoid), conv_bn(hidden, cout, 1)]
        self.block = nn.Sequential(*layers)
        self.stochastic_depth = StochasticDepth(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return self.stochastic_depth(out) + x if self.use_res_connect else out


# expand, kernel, stride, out, layers (torchvision's efficientnet_b0)
EFFICIENTNET_B0 = ((1, 3, 1, 16, 1), (6, 3, 2, 24, 2), (6, 5, 2, 40, 2), (6, 3, 2, 80, 3), (6, 5, 1, 112, 3),
                   (6, 5, 2, 192, 4), (6, 3, 1, 320, 1))


class EfficientNet(nn.Module):
    def __init__(self, in_channels, num_classes, width=1.0, depth=None, image_size=224, stochastic_depth=0.2):
        super().__init__()
        stem = make_divisible(32 * width)
        layers: list[nn.Module] = [conv_bn(in_channels, stem, 3, 2, activation=nn.SiLU)]
        plan = [(e, k, s, make_divisible(c * width), _capped(n, depth)) for e, k, s, c, n in EFFICIENTNET_B0]
        total, index, previous = sum(row[-1] for row in plan), 0, stem
        for expand, kernel, stride, cout, count in plan:
            stage = []
            for block in range(count):
                # the drop probability grows linearly with the block index, as in the paper
                stage.append(MBConv(previous, cout, expand, kernel, stride if block == 0 else 1,
                                    stochastic_depth * index / total))
                previous, index = cout, index + 1
            layers.append(nn.Sequential(*stage))
        head = make_divisible(1280 * width)
        layers.append(conv_bn(previous, head, 1, activation=nn.SiLU))
        self.features = nn.Sequential(*layers)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Dropout(0.2), nn.Linear(head, num_classes))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# ---- ConvNeXt-Tiny (Liu et al. 2022) -------------------------------------------------------------

class LayerNorm2d(nn.LayerNorm):
    """LayerNorm over the channels of an NCHW map, computed channels-last."""

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return super().forward(x.permute(0, 2, 3, 1)).permute(0, 3, 1, 2)


class LayerScale(nn.Module):
    """Per-channel learned scale of a residual branch (CaiT/ConvNeXt), initialised small."""

    def __init__(self, channels: int, init: float = 1e-6):
        super().__init__()
        self.weight = nn.Parameter(torch.full((channels,), init))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x * self.weight


class ConvNeXtBlock(nn.Module):
    """7x7 depthwise conv -> channels-last LayerNorm -> Linear 4x -> GELU -> Linear -> layer scale, + input."""

    def __init__(self, dim: int, drop: float):
        super().__init__()
        self.dwconv = nn.Conv2d(dim, dim, 7, padding=3, groups=dim)
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.pwconv1 = nn.Linear(dim, 4 * dim)
        self.act = nn.GELU()
        self.pwconv2 = nn.Linear(4 * dim, dim)
        self.layer_scale = LayerScale(dim)
        self.stochastic_depth = StochasticDepth(drop)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.dwconv(x).permute(0, 2, 3, 1)  # NHWC: LayerNorm and the Linears act on the channels
        out = self.layer_scale(self.pwconv2(self.act(self.pwconv1(self.norm(out)))))
        return x + self.stochastic_depth(out.permute(0, 3, 1, 2))


class ConvNeXt(nn.Module):
    def __init__(self, in_channels, num_classes, width=1.0, depth=None, image_size=224, stochastic_depth=0.1):
        super().__init__()
        dims = [max(8, make_divisible(d * width)) for d in (96, 192, 384, 768)]
        depths = [_capped(d, depth) for d in (3, 3, 9, 3)]
        self.stem = nn.Sequential(nn.Conv2d(in_channels, dims[0], 4, 4), LayerNorm2d(dims[0], eps=1e-6))
        total, index, stages = sum(depths), 0, []
        for stage, (dim, count) in enumerate(zip(dims, depths)):
            layers: list[nn.Module] = []
            if stage > 0:
                layers += [LayerNorm2d(dims[stage - 1], eps=1e-6), nn.Conv2d(dims[stage - 1], dim, 2, 2)]
            for _ in range(count):
                layers.append(ConvNeXtBlock(dim, stochastic_depth * index / max(1, total - 1)))
                index += 1
            stages.append(nn.Sequential(*layers))
        self.stages = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.norm = nn.LayerNorm(dims[-1], eps=1e-6)
        self.head = nn.Linear(dims[-1], num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = torch.flatten(self.avgpool(self.stages(self.stem(x))), 1)
        return self.head(self.norm(x))


# ---- RegNetX-400MF (Radosavovic et al. 2020) -----------------------------------------------------

class RegNetXBlock(nn.Module):
    """1x1 -> grouped 3x3 (group width ``group``) -> 1x1, + shortcut (projected when the shape changes)."""

    def __init__(self, cin: int, cout: int, stride: int, group: int):
        super().__init__()
        self.proj = conv_bn(cin, cout, 1, stride) if stride != 1 or cin != cout else None
        self.f = nn.Sequential(conv_bn(cin, cout, 1, activation=nn.ReLU),
                               conv_bn(cout, cout, 3, stride, groups=cout // group, activation=nn.ReLU),
                               conv_bn(cout, cout, 1))
        self.activation = nn.ReLU(inplace=True)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        shortcut = x if self.proj is None else self.proj(x)
        return self.activation(self.f(x) + shortcut)


class RegNetX(nn.Module):
    """RegNetX-400MF: widths (32, 64, 160, 400), depths (1, 2, 7, 12), group width 16, bottleneck 1."""

    def __init__(self, in_channels, num_classes, width=1.0, depth=None, image_size=224):
        super().__init__()
        group = max(2, 2 * int(round(8 * width)))  # the group width shrinks with the channels
        widths = [max(group, int(round(w * width / group)) * group) for w in (32, 64, 160, 400)]
        stem = max(8, int(round(32 * width)))
        self.stem = conv_bn(in_channels, stem, 3, 2, activation=nn.ReLU)
        stages, previous = _strided_stages(stem, widths, (1, 2, 7, 12), depth,
                                           lambda cin, cout, stride: RegNetXBlock(cin, cout, stride, group))
        self.trunk_output = nn.Sequential(*stages)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(previous, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc(torch.flatten(self.avgpool(self.trunk_output(self.stem(x))), 1))


# ---- GhostNet (Han et al. 2020) ------------------------------------------------------------------

class GhostModule(nn.Module):
    """Half the output from a regular conv, the other half from cheap depthwise convs of it; concatenated
    and sliced to ``out_channels``."""

    def __init__(self, cin: int, cout: int, relu: bool, ratio: int = 2):
        super().__init__()
        self.out_channels = cout
        init = math.ceil(cout / ratio)
        act = nn.ReLU if relu else None
        self.primary_conv = conv_bn(cin, init, 1, activation=act)
        self.cheap_operation = conv_bn(init, init * (ratio - 1), 3, groups=init, activation=act)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        primary = self.primary_conv(x)
        out = torch.cat([primary, self.cheap_operation(primary)], dim=1)
        return out[:, :self.out_channels]


class GhostBottleneck(nn.Module):
    def __init__(self, cin: int, hidden: int, cout: int, kernel: int, stride: int, se: bool):
        super().__init__()
        self.ghost1 = GhostModule(cin, hidden, relu=True)
        self.conv_dw = conv_bn(hidden, hidden, kernel, stride, groups=hidden) if stride > 1 else None
        self.se = SqueezeExcitation(hidden, make_divisible(hidden // 4, 4), nn.ReLU, nn.Hardsigmoid) if se else None
        self.ghost2 = GhostModule(hidden, cout, relu=False)
        self.shortcut = None
        if stride != 1 or cin != cout:
            self.shortcut = nn.Sequential(conv_bn(cin, cin, kernel, stride, groups=cin), conv_bn(cin, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.ghost1(x)
        if self.conv_dw is not None:
            out = self.conv_dw(out)
        if self.se is not None:
            out = self.se(out)
        out = self.ghost2(out)
        return out + (x if self.shortcut is None else self.shortcut(x))


# stages of (kernel, hidden, out, SE, stride), the published GhostNet 1.0x
GHOSTNET = (((3, 16, 16, False, 1),), ((3, 48, 24, False, 2),), ((3, 72, 24, False, 1),),
            ((5, 72, 40, True, 2),), ((5, 120, 40, True, 1),), ((3, 240, 80, False, 2),),
            ((3, 200, 80, False, 1), (3, 184, 80, False, 1), (3, 184, 80, False, 1), (3, 480, 112, True, 1),
             (3, 672, 112, True, 1)),
            ((5, 672, 160, True, 2),),
            ((5, 960, 160, False, 1), (5, 960, 160, True, 1), (5, 960, 160, False, 1), (5, 960, 160, True, 1)))


class GhostNet(nn.Module):
    def __init__(self, in_channels, num_classes, width=1.0, depth=None, image_size=224):
        super().__init__()
        stem = make_divisible(16 * width, 4)
        self.conv_stem = nn.Conv2d(in_channels, stem, 3, 2, 1, bias=False)
        self.bn1 = nn.BatchNorm2d(stem)
        self.act1 = nn.ReLU(inplace=True)
        stages, previous = [], stem
        for stage in GHOSTNET:
            blocks = []
            for kernel, hidden, out, se, stride in stage[:_capped(len(stage), depth)]:
                cout = make_divisible(out * width, 4)
                blocks.append(GhostBottleneck(previous, make_divisible(hidden * width, 4), cout, kernel, stride, se))
                previous = cout
            stages.append(nn.Sequential(*blocks))
        last = make_divisible(960 * width, 4)
        stages.append(conv_bn(previous, last, 1, activation=nn.ReLU))
        self.blocks = nn.Sequential(*stages)
        self.global_pool = nn.AdaptiveAvgPool2d(1)
        head = make_divisible(1280 * width, 4)
        self.conv_head = nn.Conv2d(last, head, 1)
        self.act2 = nn.ReLU(inplace=True)
        self.classifier = nn.Linear(head, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.blocks(self.act1(self.bn1(self.conv_stem(x))))
        x = self.act2(self.conv_head(self.global_pool(x)))
        return self.classifier(torch.flatten(x, 1))


# ---- DenseNet-121 (Huang et al. 2017, torchvision layout) ----------------------------------------

class DenseLayer(nn.Module):
    def __init__(self, cin: int, growth: int, bn_size: int = 4):
        super().__init__()
        self.norm1 = nn.BatchNorm2d(cin)
        self.relu1 = nn.ReLU(inplace=True)
        self.conv1 = nn.Conv2d(cin, bn_size * growth, 1, bias=False)
        self.norm2 = nn.BatchNorm2d(bn_size * growth)
        self.relu2 = nn.ReLU(inplace=True)
        self.conv2 = nn.Conv2d(bn_size * growth, growth, 3, 1, 1, bias=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return torch.cat([x, self.conv2(self.relu2(self.norm2(self.conv1(self.relu1(self.norm1(x))))))], dim=1)


class DenseNet121(nn.Module):
    """Growth 32, blocks (6, 12, 24, 16), 64 stem features, transitions halving channels and resolution."""

    def __init__(self, in_channels, num_classes, width=1.0, depth=None, image_size=224):
        super().__init__()
        growth, channels = max(4, int(round(32 * width))), max(8, int(round(64 * width)))
        layers: list[tuple[str, nn.Module]] = [
            ("conv0", nn.Conv2d(in_channels, channels, 7, 2, 3, bias=False)), ("norm0", nn.BatchNorm2d(channels)),
            ("relu0", nn.ReLU(inplace=True)), ("pool0", nn.MaxPool2d(3, 2, 1))]
        blocks = (6, 12, 24, 16)
        for index, count in enumerate(blocks):
            dense = []
            for _ in range(_capped(count, depth)):
                dense.append(DenseLayer(channels, growth))
                channels += growth
            layers.append((f"denseblock{index + 1}", nn.Sequential(*dense)))
            if index < len(blocks) - 1:
                layers.append((f"transition{index + 1}", nn.Sequential(
                    nn.BatchNorm2d(channels), nn.ReLU(inplace=True), nn.Conv2d(channels, channels // 2, 1, bias=False),
                    nn.AvgPool2d(2, 2, ceil_mode=True))))  # ceil: small inputs keep a 1x1 map instead of none
                channels //= 2
        layers += [("norm5", nn.BatchNorm2d(channels)), ("relu5", nn.ReLU(inplace=True))]
        self.features = nn.Sequential(OrderedDict(layers))
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Linear(channels, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.classifier(torch.flatten(self.avgpool(self.features(x)), 1))


# ---- RepVGG-A0 (Ding et al. 2021) ----------------------------------------------------------------

class RepVGGBlock(nn.Module):
    """Training form: 3x3 conv+BN, 1x1 conv+BN and (same shape) a BN identity branch, summed, ReLU.
    Deploy form (``deploy=True``): one 3x3 conv with bias, ``rbr_reparam``, which ``fuse`` computes."""

    def __init__(self, cin: int, cout: int, stride: int, deploy: bool = False):
        super().__init__()
        self.nonlinearity = nn.ReLU(inplace=True)
        if deploy:
            self.rbr_reparam = nn.Conv2d(cin, cout, 3, stride, 1)
            return
        self.rbr_identity = nn.BatchNorm2d(cin) if cin == cout and stride == 1 else None
        self.rbr_dense = conv_bn(cin, cout, 3, stride)
        self.rbr_1x1 = nn.Sequential(nn.Conv2d(cin, cout, 1, stride, bias=False), nn.BatchNorm2d(cout))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        if hasattr(self, "rbr_reparam"):
            return self.nonlinearity(self.rbr_reparam(x))
        identity = 0 if self.rbr_identity is None else self.rbr_identity(x)
        return self.nonlinearity(self.rbr_dense(x) + self.rbr_1x1(x) + identity)

    @torch.no_grad()
    def fused(self) -> tuple[torch.Tensor, torch.Tensor]:
        """The (weight, bias) of the single 3x3 conv equal to this block's three branches in eval mode."""
        weight, bias = _fuse_bn(self.rbr_dense[0].weight, self.rbr_dense[1])
        weight_1x1, bias_1x1 = _fuse_bn(self.rbr_1x1[0].weight, self.rbr_1x1[1])
        weight = weight + F.pad(weight_1x1, [1, 1, 1, 1])
        bias = bias + bias_1x1
        if self.rbr_identity is not None:
            channels = weight.shape[1]
            kernel = torch.zeros_like(weight)
            kernel[torch.arange(channels), torch.arange(channels), 1, 1] = 1.0
            weight_id, bias_id = _fuse_bn(kernel, self.rbr_identity)
            weight, bias = weight + weight_id, bias + bias_id
        return weight, bias


def _fuse_bn(kernel: torch.Tensor, bn: nn.BatchNorm2d) -> tuple[torch.Tensor, torch.Tensor]:
    std = (bn.running_var + bn.eps).sqrt()
    scale = bn.weight / std
    return kernel * scale.reshape(-1, 1, 1, 1), bn.bias - bn.running_mean * scale


class RepVGG(nn.Module):
    """RepVGG-A0: stage0 one block to min(64, 64a), stages of (2, 4, 14, 1) blocks at 64a, 128a, 256a, 512b
    with a = 0.75, b = 2.5; every stage starts with stride 2."""

    def __init__(self, in_channels, num_classes, width=1.0, depth=None, image_size=224, deploy=False):
        super().__init__()
        widths = [max(8, int(round(w * width))) for w in (48, 96, 192, 1280)]
        first = min(max(8, int(round(64 * width))), widths[0])
        self.stage0 = RepVGGBlock(in_channels, first, 2, deploy)
        stages, previous = _strided_stages(first, widths, (2, 4, 14, 1), depth,
                                           lambda cin, cout, stride: RepVGGBlock(cin, cout, stride, deploy))
        self.stage1, self.stage2, self.stage3, self.stage4 = stages
        self.gap = nn.AdaptiveAvgPool2d(1)
        self.linear = nn.Linear(previous, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.stage4(self.stage3(self.stage2(self.stage1(self.stage0(x)))))
        return self.linear(torch.flatten(self.gap(x), 1))


def repvgg_deploy(in_channels, num_classes, width=1.0, depth=None, image_size=224):
    return RepVGG(in_channels, num_classes, width, depth, image_size, deploy=True)


def reparameterize(model: nn.Module) -> nn.Module:
    """The deploy form of a RepVGG model (training form, any channel counts, e.g. after pruning): every
    block's three branches fused into one 3x3 conv. The input model is left as it was; the result carries
    a ``repvgg_deploy`` spec when the input carried a ``repvgg`` one, so its checkpoint rebuilds it."""
    model = model.eval()
    deployed = copy.deepcopy(model)
    blocks = [(name, m) for name, m in model.named_modules() if isinstance(m, RepVGGBlock)]
    if not blocks:
        raise CompressError(f"{type(model).__name__} has no RepVGG block to re-parameterise")
    for name, block in blocks:
        if hasattr(block, "rbr_reparam"):
            continue
        weight, bias = block.fused()
        target = deployed.get_submodule(name)
        conv = block.rbr_dense[0]
        target.rbr_reparam = nn.Conv2d(conv.in_channels, conv.out_channels, 3, conv.stride, 1)
        target.rbr_reparam.weight.data.copy_(weight)
        target.rbr_reparam.bias.data.copy_(bias)
        del target.rbr_dense, target.rbr_1x1, target.rbr_identity
    spec = getattr(model, "compress_spec", None)
    if spec and spec.get("builder") == "zoo" and spec["model"]["arch"] == "repvgg":
        deployed.compress_spec = {**spec, "model": {**spec["model"], "arch": "repvgg_deploy"}}
    return deployed.eval()


# ---- ViT-Ti/16 (Dosovitskiy et al. 2021, timm layout) --------------------------------------------

class PatchEmbed(nn.Module):
    def __init__(self, in_channels: int, dim: int, patch: int):
        super().__init__()
        self.proj = nn.Conv2d(in_channels, dim, patch, patch)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.proj(x).flatten(2).transpose(1, 2)


class Mlp(nn.Module):
    def __init__(self, dim: int, hidden: int, activation: Callable[[], nn.Module] = nn.GELU):
        super().__init__()
        self.fc1 = nn.Linear(dim, hidden)
        self.act = activation()
        self.fc2 = nn.Linear(hidden, dim)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.fc2(self.act(self.fc1(x)))


class EncoderBlock(nn.Module):
    """Pre-norm: x + attn(norm1(x)), x + mlp(norm2(x)). ``attn`` is multi-head self-attention with one
    fused qkv projection (compress.zoo.Attention, whose heads compress.pruning can remove)."""

    def __init__(self, dim: int, heads: int, mlp_ratio: float, activation: Callable[[], nn.Module] = nn.GELU):
        super().__init__()
        self.norm1 = nn.LayerNorm(dim, eps=1e-6)
        self.attn = Attention(dim, heads)
        self.norm2 = nn.LayerNorm(dim, eps=1e-6)
        self.mlp = Mlp(dim, int(dim * mlp_ratio), activation)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = x + self.attn(self.norm1(x))
        return x + self.mlp(self.norm2(x))


class VisionTransformer(nn.Module):
    """ViT-Ti/16: dim 192, 12 blocks of 3 heads, MLP ratio 4, class token, learned position embedding.
    The patch is 16 pixels from 128x128 up, else image_size // 8 (a 32x32 input gives 64 tokens)."""

    def __init__(self, in_channels, num_classes, width=1.0, depth=None, image_size=224, heads=3):
        super().__init__()
        patch = 16 if image_size >= 128 else max(1, image_size // 8)
        tokens = (image_size // patch) ** 2
        dim = heads * max(4, int(round(64 * width)))
        self.patch_embed = PatchEmbed(in_channels, dim, patch)
        self.cls_token = nn.Parameter(torch.zeros(1, 1, dim))
        self.pos_embed = nn.Parameter(torch.randn(1, tokens + 1, dim) * 0.02)
        self.blocks = nn.Sequential(*[EncoderBlock(dim, heads, 4.0) for _ in range(_capped(12, depth))])
        self.norm = nn.LayerNorm(dim, eps=1e-6)
        self.head = nn.Linear(dim, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.patch_embed(x)
        x = torch.cat([self.cls_token.expand(x.shape[0], -1, -1), x], dim=1) + self.pos_embed
        return self.head(self.norm(self.blocks(x))[:, 0])


# ---- MobileViT-S (Mehta & Rastegari 2022) --------------------------------------------------------

class InvertedResidual(nn.Module):
    """MobileNetV2 block with SiLU (MobileViT's MV2)."""

    def __init__(self, cin: int, cout: int, stride: int, expand: int):
        super().__init__()
        hidden = cin * expand
        self.use_res_connect = stride == 1 and cin == cout
        self.block = nn.Sequential(conv_bn(cin, hidden, 1, activation=nn.SiLU),
                                   conv_bn(hidden, hidden, 3, stride, groups=hidden, activation=nn.SiLU),
                                   conv_bn(hidden, cout, 1))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.block(x)
        return x + out if self.use_res_connect else out


class MobileViTBlock(nn.Module):
    """Local 3x3 + 1x1 convs, then ``layers`` transformer blocks over patches: the map is unfolded so that
    pixel p of every patch attends to pixel p of all other patches, folded back, projected, concatenated
    with the input and fused by a 3x3 conv. Every reshape reads its sizes from the tensor."""

    def __init__(self, channels: int, dim: int, layers: int, patch: int, heads: int = 4):
        super().__init__()
        self.patch = patch
        self.conv_kxk = conv_bn(channels, channels, 3, activation=nn.SiLU)
        self.conv_1x1 = nn.Conv2d(channels, dim, 1, bias=False)
        self.transformer = nn.Sequential(*[EncoderBlock(dim, heads, 2.0, nn.SiLU) for _ in range(layers)])
        self.norm = nn.LayerNorm(dim)
        self.conv_proj = conv_bn(dim, channels, 1, activation=nn.SiLU)
        self.conv_fusion = conv_bn(2 * channels, channels, 3, activation=nn.SiLU)

    def unfold(self, x: torch.Tensor) -> torch.Tensor:
        batch, dim, height, width = x.shape
        p = self.patch
        x = x.reshape(batch, dim, height // p, p, width // p, p).permute(0, 3, 5, 2, 4, 1)
        return x.reshape(batch * p * p, (height // p) * (width // p), dim)

    def fold(self, x: torch.Tensor, batch: int, height: int, width: int) -> torch.Tensor:
        p = self.patch
        x = x.reshape(batch, p, p, height // p, width // p, x.shape[-1]).permute(0, 5, 3, 1, 4, 2)
        return x.reshape(batch, x.shape[1], height, width)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        local = self.conv_1x1(self.conv_kxk(x))
        batch, _, height, width = local.shape
        tokens = self.norm(self.transformer(self.unfold(local)))
        out = self.conv_proj(self.fold(tokens, batch, height, width))
        return self.conv_fusion(torch.cat([x, out], dim=1))


class MobileViT(nn.Module):
    """MobileViT-S: MV2 stages to 32, 64 and 96 channels, then MobileViT blocks at 96/128/160 channels
    (transformer dims 144/192/240, 2/4/3 layers) after stride-2 MV2 blocks, 1x1 conv to 640, pool, fc.
    Patches are 2x2 where the map side is even (the paper's choice), else 1x1 (small inputs)."""

    def __init__(self, in_channels, num_classes, width=1.0, depth=None, image_size=224):
        super().__init__()
        def w(c: int) -> int:
            return max(8, make_divisible(c * width, 8))

        def dim(d: int) -> int:
            return 4 * max(2, int(round(d * width / 4)))  # 4 heads

        side = math.ceil(image_size / 2)
        self.conv_stem = conv_bn(in_channels, w(16), 3, 2, activation=nn.SiLU)
        self.layer1 = nn.Sequential(InvertedResidual(w(16), w(32), 1, 4))
        side = math.ceil(side / 2)
        self.layer2 = nn.Sequential(InvertedResidual(w(32), w(64), 2, 4),
                                    *[InvertedResidual(w(64), w(64), 1, 4) for _ in range(_capped(2, depth))])
        stages, previous = [], w(64)
        for channels, transformer_dim, layers in ((96, 144, 2), (128, 192, 4), (160, 240, 3)):
            side = math.ceil(side / 2)
            patch = 2 if side % 2 == 0 else 1
            stages.append(nn.Sequential(InvertedResidual(previous, w(channels), 2, 4),
                                        MobileViTBlock(w(channels), dim(transformer_dim), _capped(layers, depth), patch)))
            previous = w(channels)
        self.layer3, self.layer4, self.layer5 = stages
        self.conv_1x1_exp = conv_bn(previous, 4 * previous, 1, activation=nn.SiLU)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(4 * previous, num_classes)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.layer2(self.layer1(self.conv_stem(x)))
        x = self.conv_1x1_exp(self.layer5(self.layer4(self.layer3(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


# name -> builder(in_channels, num_classes, width, depth, image_size); compress.zoo builds these by name
FAMILIES: dict[str, Callable[..., nn.Module]] = {
    "resnet18": resnet18,
    "resnet50": resnet50,
    "mobilenet_v3": MobileNetV3,
    "efficientnet_b0": EfficientNet,
    "convnext": ConvNeXt,
    "regnet_x": RegNetX,
    "ghostnet": GhostNet,
    "densenet121": DenseNet121,
    "repvgg": RepVGG,
    "repvgg_deploy": repvgg_deploy,
    "vit_tiny": VisionTransformer,
    "mobilevit": MobileViT,
}


def build_family(name: str, input_shape: tuple[int, ...], num_classes: int, width: float = 1.0,
                 depth: int | None = None) -> nn.Module:
    """One of FAMILIES for square (C, S, S) image inputs."""
    if len(input_shape) != 3:
        raise CompressError(f"{name} needs image inputs (C, H, W), got per-sample shape {tuple(input_shape)}")
    channels, height, width_px = input_shape
    if height != width_px:
        raise CompressError(f"{name} is built for square images, got {height}x{width_px}: set data.image_size")
    if depth is not None and depth < 1:
        raise CompressError(f"{name} depth caps the blocks per stage and must be >= 1, got {depth}")
    return FAMILIES[name](channels, num_classes, width, depth, height)
