"""Face-recognition backbones: iResNet-18/34/50/100 and a small MobileFaceNet for CPUs.

The iResNets keep insightface arcface_torch's module names and layout, so a
``backbone.pth`` trained there loads here with strict key matching (and ours load
there). Input: RGB float N x 3 x 112 x 112 in -1..1; output: N x num_features
(unnormalised; normalise before comparing).
"""

from __future__ import annotations

from collections.abc import Callable

import torch
from torch import nn


def _conv3x3(inp: int, out: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(inp, out, 3, stride=stride, padding=1, bias=False)


class IBasicBlock(nn.Module):
    """BN -> conv3x3 -> BN -> PReLU -> conv3x3(stride) -> BN, plus the (projected) input."""

    expansion = 1

    def __init__(
        self, inplanes: int, planes: int, stride: int = 1, downsample: nn.Module | None = None
    ):
        super().__init__()
        self.bn1 = nn.BatchNorm2d(inplanes, eps=1e-05)
        self.conv1 = _conv3x3(inplanes, planes)
        self.bn2 = nn.BatchNorm2d(planes, eps=1e-05)
        self.prelu = nn.PReLU(planes)
        self.conv2 = _conv3x3(planes, planes, stride)
        self.bn3 = nn.BatchNorm2d(planes, eps=1e-05)
        self.downsample = downsample

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        out = self.bn3(self.conv2(self.prelu(self.bn2(self.conv1(self.bn1(x))))))
        return out + (self.downsample(x) if self.downsample is not None else x)


class IResNet(nn.Module):
    """The "improved" ResNet of ArcFace: four stride-2 stages on a 112 x 112 face."""

    def __init__(
        self,
        layers: list[int],
        num_features: int = 512,
        dropout: float = 0.0,
        input_size: int = 112,
    ):
        super().__init__()
        self.inplanes = 64
        self.conv1 = nn.Conv2d(3, 64, 3, stride=1, padding=1, bias=False)
        self.bn1 = nn.BatchNorm2d(64, eps=1e-05)
        self.prelu = nn.PReLU(64)
        self.layer1 = self._make_layer(64, layers[0])
        self.layer2 = self._make_layer(128, layers[1])
        self.layer3 = self._make_layer(256, layers[2])
        self.layer4 = self._make_layer(512, layers[3])
        self.bn2 = nn.BatchNorm2d(512, eps=1e-05)
        self.dropout = nn.Dropout(p=dropout, inplace=True)
        side = input_size // 16
        self.fc = nn.Linear(512 * side * side, num_features)
        self.features = nn.BatchNorm1d(num_features, eps=1e-05)
        nn.init.constant_(self.features.weight, 1.0)
        self.features.weight.requires_grad = False
        for module in self.modules():
            if isinstance(module, nn.Conv2d):
                nn.init.normal_(module.weight, 0, 0.1)
            elif isinstance(module, nn.BatchNorm2d):
                nn.init.constant_(module.weight, 1)
                nn.init.constant_(module.bias, 0)

    def _make_layer(self, planes: int, blocks: int) -> nn.Sequential:
        downsample = nn.Sequential(
            nn.Conv2d(self.inplanes, planes, 1, stride=2, bias=False),
            nn.BatchNorm2d(planes, eps=1e-05),
        )
        layers = [IBasicBlock(self.inplanes, planes, 2, downsample)]
        self.inplanes = planes
        layers += [IBasicBlock(planes, planes) for _ in range(1, blocks)]
        return nn.Sequential(*layers)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.prelu(self.bn1(self.conv1(x)))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        x = self.dropout(torch.flatten(self.bn2(x), 1))
        return self.features(self.fc(x))


class _ConvBlock(nn.Sequential):
    def __init__(
        self, inp: int, out: int, kernel: int, stride: int, groups: int = 1, activation: bool = True
    ):
        layers: list[nn.Module] = [
            nn.Conv2d(inp, out, kernel, stride, kernel // 2, groups=groups, bias=False),
            nn.BatchNorm2d(out),
        ]
        if activation:
            layers.append(nn.PReLU(out))
        super().__init__(*layers)


class _Bottleneck(nn.Module):
    """Inverted residual: 1x1 expand -> depthwise 3x3 -> 1x1 project (linear)."""

    def __init__(self, inp: int, out: int, stride: int, expansion: int):
        super().__init__()
        hidden = inp * expansion
        self.residual = stride == 1 and inp == out
        self.body = nn.Sequential(
            _ConvBlock(inp, hidden, 1, 1),
            _ConvBlock(hidden, hidden, 3, stride, groups=hidden),
            _ConvBlock(hidden, out, 1, 1, activation=False),
        )

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return x + self.body(x) if self.residual else self.body(x)


class MobileFaceNet(nn.Module):
    """A MobileFaceNet-style network (Chen et al. 2018) with a width multiplier, for CPU
    training: depthwise bottlenecks and a global depthwise (GDC) embedding head."""

    def __init__(self, num_features: int = 128, width: float = 1.0, input_size: int = 112):
        super().__init__()

        def c(channels: int) -> int:
            return max(8, int(round(channels * width / 8)) * 8)

        # (expansion, out channels, repeats, first stride)
        settings = [(2, 64, 5, 2), (4, 128, 1, 2), (2, 128, 6, 1), (4, 128, 1, 2), (2, 128, 2, 1)]
        layers: list[nn.Module] = [
            _ConvBlock(3, c(64), 3, 2),
            _ConvBlock(c(64), c(64), 3, 1, groups=c(64)),
        ]
        channels = c(64)
        for expansion, out, repeats, stride in settings:
            for index in range(repeats):
                layers.append(_Bottleneck(channels, c(out), stride if index == 0 else 1, expansion))
                channels = c(out)
        layers.append(_ConvBlock(channels, c(512), 1, 1))
        self.body = nn.Sequential(*layers)
        side = input_size // 16
        self.gdc = _ConvBlock(c(512), c(512), side, 1, groups=c(512), activation=False)
        self.gdc[0].padding = (0, 0)
        self.embedding = nn.Linear(c(512), num_features, bias=False)
        self.features = nn.BatchNorm1d(num_features)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.gdc(self.body(x)).flatten(1)
        return self.features(self.embedding(x))


BACKBONES: dict[str, Callable[..., nn.Module]] = {
    "r18": lambda **kw: IResNet([2, 2, 2, 2], **kw),
    "r34": lambda **kw: IResNet([3, 4, 6, 3], **kw),
    "r50": lambda **kw: IResNet([3, 4, 14, 3], **kw),
    "r100": lambda **kw: IResNet([3, 13, 30, 3], **kw),
    "mbf": lambda **kw: MobileFaceNet(**kw),
    "mbf_small": lambda **kw: MobileFaceNet(width=0.5, **kw),
}


def get_model(name: str, **kwargs) -> nn.Module:
    """A backbone by name: r18, r34, r50, r100 (arcface_torch keys), mbf, mbf_small."""
    if name not in BACKBONES:
        raise ValueError(f"unknown backbone {name!r}; use one of {sorted(BACKBONES)}")
    return BACKBONES[name](**kwargs)
