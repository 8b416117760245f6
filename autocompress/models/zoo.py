"""torchvision families adapted to small inputs, built from scratch (never pretrained weights).

For inputs smaller than 64 px the stem becomes a 3x3 stride-1 convolution and any stem max-pool is
removed, so a 32x32 image keeps a useful spatial size (ResNet/ShuffleNet end at 4x4, the MobileNets,
EfficientNet and RegNet at 2x2). ``width_mult`` / ``depth_mult`` build a smaller member of the same
family. Every BatchNorm gets momentum 0.1 (torchvision's MobileNetV3 uses 0.01, which leaves eval-mode
accuracy at chance when training from scratch on a small set).
"""

from __future__ import annotations

import math
from functools import partial
from typing import Callable

import torch.nn as nn
from torchvision.models import efficientnet as tv_eff
from torchvision.models import mobilenetv2 as tv_mb2
from torchvision.models import mobilenetv3 as tv_mb3
from torchvision.models import regnet as tv_regnet
from torchvision.models import resnet as tv_resnet
from torchvision.models import shufflenetv2 as tv_shuffle

from ..errors import ConfigError
from ..registry import Registry

SMALL_INPUT = 64  # below this side length the stem is adapted

Builder = Callable[..., nn.Module]  # (num_classes, input_shape, width_mult, depth_mult) -> nn.Module
MODELS: Registry[Builder] = Registry("model")
_FAMILY: dict[str, str] = {}


def _register(name: str, family: str):
    def deco(fn: Builder) -> Builder:
        MODELS.register(name, fn)
        _FAMILY[name] = family
        return fn

    return deco


def family_of(name: str) -> str:
    """The family of a zoo name ("resnet18" -> "resnet"); "user" for anything else."""
    return _FAMILY.get(name, "user")


def make_divisible(v: float, divisor: int = 8, min_value: int | None = None) -> int:
    min_value = min_value or divisor
    new_v = max(min_value, int(v + divisor / 2) // divisor * divisor)
    if new_v < 0.9 * v:
        new_v += divisor
    return new_v


def _scale_depth(n: int, depth_mult: float) -> int:
    return max(1, int(math.ceil(n * depth_mult)))


# ---------------------------------------------------------------- adaptation helpers
def _replace_stem(model: nn.Module, in_channels: int, small: bool) -> None:
    """Rebuild the first convolution for ``in_channels``; for small inputs make it 3x3 stride 1."""
    name, conv = next(((n, m) for n, m in model.named_modules() if isinstance(m, nn.Conv2d)), (None, None))
    if conv is None:
        return
    k = (3, 3) if small else conv.kernel_size
    stride = (1, 1) if small else conv.stride
    pad = (k[0] // 2, k[1] // 2) if small else conv.padding
    if (in_channels, k, stride, pad) == (conv.in_channels, conv.kernel_size, conv.stride, conv.padding):
        return
    new = nn.Conv2d(in_channels, conv.out_channels, k, stride, pad, bias=conv.bias is not None)
    nn.init.kaiming_normal_(new.weight, mode="fan_out", nonlinearity="relu")
    if new.bias is not None:
        nn.init.zeros_(new.bias)
    model.set_submodule(name, new)


def _finish(model: nn.Module, input_shape, small: bool) -> nn.Module:
    _replace_stem(model, int(input_shape[0]), small)
    if small and isinstance(getattr(model, "maxpool", None), nn.MaxPool2d):
        model.maxpool = nn.Identity()
    for m in model.modules():
        if isinstance(m, nn.modules.batchnorm._BatchNorm):
            m.momentum = 0.1
    return model


def _is_small(input_shape) -> bool:
    return min(int(input_shape[1]), int(input_shape[2])) < SMALL_INPUT


def build_model(
    name: str,
    num_classes: int,
    input_shape: tuple[int, int, int] = (3, 32, 32),
    width_mult: float = 1.0,
    depth_mult: float = 1.0,
) -> nn.Module:
    """A freshly initialised zoo model; ``width_mult``/``depth_mult`` < 1 give a smaller member."""
    builder = MODELS.get(name)
    for label, v in (("width_mult", width_mult), ("depth_mult", depth_mult)):
        if not (isinstance(v, (int, float)) and 0 < v <= 4):
            raise ConfigError(f"model '{name}': {label} {v!r} must be a number in (0, 4]; e.g. 0.5 for half")
    if int(num_classes) < 2:
        raise ConfigError(f"model '{name}': num_classes {num_classes} must be >= 2")
    if len(input_shape) != 3:
        raise ConfigError(f"model '{name}': input_shape {tuple(input_shape)} must be (channels, height, width)")
    model = builder(int(num_classes), tuple(input_shape), float(width_mult), float(depth_mult))
    return _finish(model, input_shape, _is_small(input_shape))


# ---------------------------------------------------------------- ResNet
class _ResNet(tv_resnet.ResNet):
    """torchvision's ResNet (same module names) with scalable stage widths."""

    def __init__(self, block, layers: list[int], widths: list[int], num_classes: int):
        nn.Module.__init__(self)
        self._norm_layer = nn.BatchNorm2d
        self.inplanes, self.dilation, self.groups, self.base_width = widths[0], 1, 1, 64
        self.conv1 = nn.Conv2d(3, widths[0], kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(widths[0])
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        self.layer1 = self._make_layer(block, widths[0], layers[0])
        self.layer2 = self._make_layer(block, widths[1], layers[1], stride=2)
        self.layer3 = self._make_layer(block, widths[2], layers[2], stride=2)
        self.layer4 = self._make_layer(block, widths[3], layers[3], stride=2)
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(widths[3] * block.expansion, num_classes)
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
            elif isinstance(m, nn.BatchNorm2d):
                nn.init.ones_(m.weight)
                nn.init.zeros_(m.bias)


def _resnet(block, layers, base_width: float = 1.0):
    def build(num_classes, input_shape, width_mult, depth_mult):
        widths = [make_divisible(w * base_width * width_mult) for w in (64, 128, 256, 512)]
        return _ResNet(block, [_scale_depth(n, depth_mult) for n in layers], widths, num_classes)

    return build


_register("resnet18", "resnet")(_resnet(tv_resnet.BasicBlock, [2, 2, 2, 2]))
# half-width ResNet-18 (stages 32/64/128/256; named like torchvision's shufflenet_v2_x0_5): the one-click default,
# chosen by measurement (benchmarks/README.md "One-click default"): at 32 px and batch 1 it is compute-bound enough
# on a 2-core CPU for pruning and int8 to show (6-8x), and its teacher trains on digits in ~3 minutes there
_register("resnet18_x0_5", "resnet")(_resnet(tv_resnet.BasicBlock, [2, 2, 2, 2], 0.5))
_register("resnet34", "resnet")(_resnet(tv_resnet.BasicBlock, [3, 4, 6, 3]))
_register("resnet50", "resnet")(_resnet(tv_resnet.Bottleneck, [3, 4, 6, 3]))


# ---------------------------------------------------------------- MobileNet v2 / v3
@_register("mobilenet_v2", "mobilenet_v2")
def _mobilenet_v2(num_classes, input_shape, width_mult, depth_mult):
    setting = [[1, 16, 1, 1], [6, 24, 2, 2], [6, 32, 3, 2], [6, 64, 4, 2], [6, 96, 3, 1], [6, 160, 3, 2],
               [6, 320, 1, 1]]
    setting = [[t, c, _scale_depth(n, depth_mult), s] for t, c, n, s in setting]
    return tv_mb2.MobileNetV2(num_classes=num_classes, width_mult=width_mult, inverted_residual_setting=setting)


def _mobilenet_v3(arch: str):
    def build(num_classes, input_shape, width_mult, depth_mult):
        setting, last_channel = tv_mb3._mobilenet_v3_conf(arch, width_mult=width_mult)
        if depth_mult < 1:  # keep the first ceil(n*d) blocks of each run of same-width blocks
            stages: list[list] = []
            for cnf in setting:
                if not stages or cnf.stride != 1 or cnf.out_channels != stages[-1][-1].out_channels:
                    stages.append([cnf])
                else:
                    stages[-1].append(cnf)
            setting = [c for st in stages for c in st[: _scale_depth(len(st), depth_mult)]]
            for prev, cnf in zip(setting, setting[1:]):
                cnf.input_channels = prev.out_channels
        norm = partial(nn.BatchNorm2d, eps=0.001, momentum=0.1)
        return tv_mb3.MobileNetV3(setting, last_channel, num_classes=num_classes, norm_layer=norm)

    return build


_register("mobilenet_v3_small", "mobilenet_v3")(_mobilenet_v3("mobilenet_v3_small"))
_register("mobilenet_v3_large", "mobilenet_v3")(_mobilenet_v3("mobilenet_v3_large"))


# ---------------------------------------------------------------- EfficientNet
def _efficientnet(arch: str, dropout: float):
    def build(num_classes, input_shape, width_mult, depth_mult):
        base = {"efficientnet_b0": (1.0, 1.0), "efficientnet_b1": (1.0, 1.1)}[arch]
        setting, last_channel = tv_eff._efficientnet_conf(
            arch, width_mult=base[0] * width_mult, depth_mult=base[1] * depth_mult
        )
        return tv_eff.EfficientNet(setting, dropout, num_classes=num_classes, last_channel=last_channel)

    return build


_register("efficientnet_b0", "efficientnet")(_efficientnet("efficientnet_b0", 0.2))
_register("efficientnet_b1", "efficientnet")(_efficientnet("efficientnet_b1", 0.2))


# ---------------------------------------------------------------- ShuffleNet v2
def _shufflenet(channels: list[int]):
    def build(num_classes, input_shape, width_mult, depth_mult):
        stages = [make_divisible(c * width_mult, 8) for c in channels[1:4]]
        last = make_divisible(channels[4] * min(1.0, width_mult * 2), 8) if width_mult < 1 else channels[4]
        repeats = [_scale_depth(n, depth_mult) for n in (4, 8, 4)]
        return tv_shuffle.ShuffleNetV2(repeats, [channels[0], *stages, last], num_classes=num_classes)

    return build


_register("shufflenet_v2_x0_5", "shufflenet_v2")(_shufflenet([24, 48, 96, 192, 1024]))
_register("shufflenet_v2_x1_0", "shufflenet_v2")(_shufflenet([24, 116, 232, 464, 1024]))


# ---------------------------------------------------------------- RegNet
def _regnet(depth: int, w_0: int, w_a: float, w_m: float, group_width: int, se_ratio: float | None = None):
    def build(num_classes, input_shape, width_mult, depth_mult):
        params = tv_regnet.BlockParams.from_init_params(
            depth=_scale_depth(depth, depth_mult),
            w_0=make_divisible(w_0 * width_mult),
            w_a=w_a * width_mult,
            w_m=w_m,
            group_width=max(8, make_divisible(group_width * width_mult)) if width_mult < 1 else group_width,
            se_ratio=se_ratio,
        )
        norm = partial(nn.BatchNorm2d, eps=1e-05, momentum=0.1)
        stem = make_divisible(32 * width_mult) if width_mult < 1 else 32
        return tv_regnet.RegNet(params, num_classes=num_classes, stem_width=stem, norm_layer=norm)

    return build


_register("regnet_x_400mf", "regnet")(_regnet(22, 24, 24.48, 2.54, 16))
_register("regnet_y_400mf", "regnet")(_regnet(16, 48, 27.89, 2.09, 8, 0.25))
