"""VGG-16 with batch norm: a CIFAR variant (32 px, one linear classifier) and the 224-px one."""

from __future__ import annotations

from torch import nn

CFG16 = [64, 64, "P", 128, 128, "P", 256, 256, 256, "P", 512, 512, 512, "P", 512, 512, 512, "P"]


class VGG(nn.Module):
    def __init__(self, num_classes=10, in_channels=3, image_size=32, pool="max", dropout=0.5):
        super().__init__()
        layers, c = [], in_channels
        for v in CFG16:
            if v == "P":
                layers.append(nn.MaxPool2d(2) if pool == "max" else nn.AvgPool2d(2))
            else:
                layers += [nn.Conv2d(c, v, 3, padding=1, bias=False), nn.BatchNorm2d(v), nn.ReLU(inplace=True)]
                c = v
        self.features = nn.Sequential(*layers)
        if image_size >= 224:
            self.pool = nn.AdaptiveAvgPool2d(7)
            self.classifier = nn.Sequential(
                nn.Flatten(), nn.Linear(512 * 49, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout),
                nn.Linear(4096, 4096), nn.ReLU(inplace=True), nn.Dropout(dropout), nn.Linear(4096, num_classes),
            )
        else:
            # 32 px / 2^5 = 1x1x512 after the last stage
            self.pool = nn.AdaptiveAvgPool2d(1)
            self.classifier = nn.Sequential(
                nn.Flatten(), nn.Linear(512, 512), nn.ReLU(inplace=True), nn.Dropout(dropout),
                nn.Linear(512, num_classes),
            )

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


def vgg16(num_classes=10, in_channels=3, image_size=32, **kw):
    return VGG(num_classes, in_channels, image_size, **kw)
