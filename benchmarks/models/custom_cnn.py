"""A user-style CNN for the peer benchmark: the kind of model a user writes by hand rather than takes from a
zoo. It has a plain conv stem, residual blocks with depthwise-separable convs, squeeze-excitation, a
two-branch block joined by a concat, and a linear head: the structures structured pruning must track.

    autocompress run --model benchmarks/models/custom_cnn.py:custom_cnn
"""

import torch
import torch.nn as nn


def conv_bn(cin, cout, k=3, stride=1, groups=1):
    return nn.Sequential(nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False),
                         nn.BatchNorm2d(cout), nn.ReLU(inplace=True))


class SE(nn.Module):
    def __init__(self, c, r=4):
        super().__init__()
        self.fc1 = nn.Conv2d(c, c // r, 1)
        self.fc2 = nn.Conv2d(c // r, c, 1)

    def forward(self, x):
        s = x.mean((2, 3), keepdim=True)
        return x * torch.sigmoid(self.fc2(torch.relu(self.fc1(s))))


class DSResidual(nn.Module):
    """Depthwise-separable residual block with squeeze-excitation."""

    def __init__(self, c, expand=2):
        super().__init__()
        h = c * expand
        self.pw1 = conv_bn(c, h, 1)
        self.dw = conv_bn(h, h, 3, groups=h)
        self.se = SE(h)
        self.pw2 = nn.Sequential(nn.Conv2d(h, c, 1, bias=False), nn.BatchNorm2d(c))

    def forward(self, x):
        return torch.relu(x + self.pw2(self.se(self.dw(self.pw1(x)))))


class Concat(nn.Module):
    """Two branches (3x3 and 1x1 -> 3x3) concatenated, then a strided transition."""

    def __init__(self, cin, cout):
        super().__init__()
        self.a = conv_bn(cin, cout // 2, 3)
        self.b = nn.Sequential(conv_bn(cin, cout // 4, 1), conv_bn(cout // 4, cout // 2, 3))
        self.down = conv_bn(cout, cout, 3, stride=2)

    def forward(self, x):
        return self.down(torch.cat([self.a(x), self.b(x)], 1))


def custom_cnn(num_classes=10, in_channels=3, width=32):
    w = width
    return nn.Sequential(
        conv_bn(in_channels, w, 3),                      # 32x32
        DSResidual(w), Concat(w, 2 * w),                 # -> 16x16
        DSResidual(2 * w), DSResidual(2 * w), Concat(2 * w, 4 * w),  # -> 8x8
        DSResidual(4 * w), DSResidual(4 * w), Concat(4 * w, 8 * w),  # -> 4x4
        DSResidual(8 * w),
        nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Dropout(0.1), nn.Linear(8 * w, num_classes),
    )
