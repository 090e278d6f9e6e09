"""MobileNet-v2: inverted residuals with ReLU6, depthwise convolutions and linear bottlenecks.

The CIFAR variant keeps resolution longer (stride-1 stem, stride-1 second stage), as is usual for
32-px inputs."""

from __future__ import annotations

from torch import nn


def conv_bn(cin, cout, k, stride, groups=1, act=True):
    layers = [nn.Conv2d(cin, cout, k, stride, k // 2, groups=groups, bias=False), nn.BatchNorm2d(cout)]
    if act:
        layers.append(nn.ReLU6(inplace=True))
    return layers


class InvertedResidual(nn.Module):
    def __init__(self, cin, cout, stride, expand):
        super().__init__()
        hidden = cin * expand
        layers = conv_bn(cin, hidden, 1, 1) if expand != 1 else []
        layers += conv_bn(hidden, hidden, 3, stride, groups=hidden)  # depthwise
        layers += conv_bn(hidden, cout, 1, 1, act=False)  # linear bottleneck: no activation
        self.conv = nn.Sequential(*layers)
        self.use_residual = stride == 1 and cin == cout

    def forward(self, x):
        return x + self.conv(x) if self.use_residual else self.conv(x)


class MobileNetV2(nn.Module):
    # t (expansion), c (channels), n (repeats), s (stride)
    IMAGENET = [(1, 16, 1, 1), (6, 24, 2, 2), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]
    CIFAR = [(1, 16, 1, 1), (6, 24, 2, 1), (6, 32, 3, 2), (6, 64, 4, 2), (6, 96, 3, 1), (6, 160, 3, 2), (6, 320, 1, 1)]

    def __init__(self, num_classes=10, in_channels=3, image_size=32, width=1.0, dropout=0.2):
        super().__init__()
        small = image_size < 64
        cfg = self.CIFAR if small else self.IMAGENET
        c = int(32 * width)
        layers = conv_bn(in_channels, c, 3, 1 if small else 2)
        for t, ch, n, s in cfg:
            cout = int(ch * width)
            for i in range(n):
                layers.append(InvertedResidual(c, cout, s if i == 0 else 1, t))
                c = cout
        last = int(1280 * max(1.0, width))
        layers += conv_bn(c, last, 1, 1)
        self.features = nn.Sequential(*layers)
        self.pool = nn.AdaptiveAvgPool2d(1)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Dropout(dropout), nn.Linear(last, num_classes))
        for m in self.modules():
            if isinstance(m, nn.Conv2d):
                nn.init.kaiming_normal_(m.weight, mode="fan_out")
            elif isinstance(m, nn.Linear):
                nn.init.normal_(m.weight, 0, 0.01)
                nn.init.zeros_(m.bias)

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


def mobilenet_v2(num_classes=10, in_channels=3, image_size=32, **kw):
    return MobileNetV2(num_classes, in_channels, image_size, **kw)
