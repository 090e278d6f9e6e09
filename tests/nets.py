"""Small random networks of every kind the engine supports (used by several test files)."""

import torch
import torch.nn.functional as F
from torch import nn


def randomize_bn(model: nn.Module, seed: int = 0) -> nn.Module:
    """Give BN layers non-trivial statistics so folding and thresholds are exercised."""
    g = torch.Generator().manual_seed(seed)
    for m in model.modules():
        if isinstance(m, (nn.BatchNorm1d, nn.BatchNorm2d)):
            n = m.num_features
            m.running_mean.copy_(torch.rand(n, generator=g) - 0.5)
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.rand(n, generator=g) + 0.5)
            m.bias.data.copy_(torch.rand(n, generator=g) * 0.4 - 0.1)
    return model.eval()


class VGGLike(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(
            nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(inplace=True), nn.MaxPool2d(2),
            nn.Conv2d(8, 12, 3, padding=1, bias=False), nn.BatchNorm2d(12), nn.ReLU(), nn.MaxPool2d(3, 2, 1),
            nn.Conv2d(12, 16, 3, padding=1), nn.ReLU(), nn.AvgPool2d(2),
        )
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(16 * 2 * 2, 20), nn.ReLU(), nn.Dropout(0.3),
                                        nn.Linear(20, 5))

    def forward(self, x):
        return self.classifier(self.features(x))


class ResBlockNet(nn.Module):
    """A ResNet basic block with a 1x1 downsample shortcut, plus an identity block, `+=` and torch.add."""

    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1, bias=False), nn.BatchNorm2d(8), nn.ReLU())
        self.c1 = nn.Conv2d(8, 16, 3, 2, 1, bias=False)
        self.b1 = nn.BatchNorm2d(16)
        self.c2 = nn.Conv2d(16, 16, 3, 1, 1, bias=False)
        self.b2 = nn.BatchNorm2d(16)
        self.down = nn.Sequential(nn.Conv2d(8, 16, 1, 2, bias=False), nn.BatchNorm2d(16))
        self.c3 = nn.Conv2d(16, 16, 3, 1, 1)
        self.c4 = nn.Conv2d(16, 16, 3, 1, 1)
        self.fc = nn.Linear(16, 4)

    def forward(self, x):
        x = self.stem(x)
        out = F.relu(self.b1(self.c1(x)))
        out = self.b2(self.c2(out))
        out += self.down(x)
        y = torch.relu(out)
        z = torch.add(self.c4(F.relu(self.c3(y))), y)
        z = z.relu()
        z = F.adaptive_avg_pool2d(z, 1)
        return self.fc(z.view(z.size(0), -1))


class InvertedResidualNet(nn.Module):
    """MobileNet-v2 blocks: ReLU6, depthwise conv, linear bottlenecks whose sum feeds the next block."""

    def __init__(self):
        super().__init__()
        from spikeconverter.models.mobilenet import InvertedResidual

        self.stem = nn.Sequential(nn.Conv2d(3, 8, 3, 1, 1, bias=False), nn.BatchNorm2d(8), nn.ReLU6())
        self.b1 = InvertedResidual(8, 8, 1, 1)  # no expansion, residual
        self.b2 = InvertedResidual(8, 12, 2, 4)
        self.b3 = InvertedResidual(12, 12, 1, 4)  # residual on a linear sum
        self.b4 = InvertedResidual(12, 12, 1, 3)  # residual again: a chain of linear sums
        self.head = nn.Sequential(nn.Conv2d(12, 24, 1), nn.Hardtanh(0.0, 6.0), nn.AdaptiveAvgPool2d(1))
        self.fc = nn.Linear(24, 3)

    def forward(self, x):
        x = self.b4(self.b3(self.b2(self.b1(self.stem(x)))))
        return self.fc(torch.flatten(self.head(x), 1))


class ConcatNet(nn.Module):
    """Branches of different depth meeting in torch.cat, functional ReLU6, reshape."""

    def __init__(self):
        super().__init__()
        self.a = nn.Conv2d(3, 6, 3, padding=1)
        self.b1 = nn.Conv2d(6, 6, 3, padding=1)
        self.b2 = nn.Conv2d(6, 6, 1)
        self.c = nn.Conv2d(12, 8, 3, padding=1, groups=2)
        self.fc = nn.Linear(8 * 4 * 4, 6)

    def forward(self, x):
        a = F.relu(self.a(x), inplace=True)
        b = F.relu6(self.b2(F.relu(self.b1(a))))
        y = F.relu(self.c(torch.cat([a, b], dim=1)))
        y = F.max_pool2d(y, 2)
        return self.fc(y.reshape(y.shape[0], -1))


class Conv1dNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.body = nn.Sequential(nn.Conv1d(2, 6, 5, padding=2), nn.BatchNorm1d(6), nn.ReLU(), nn.AvgPool1d(2),
                                  nn.Conv1d(6, 6, 3, groups=6, padding=1), nn.ReLU(), nn.Flatten(),
                                  nn.Linear(6 * 8, 16), nn.BatchNorm1d(16), nn.ReLU(), nn.Linear(16, 3))

    def forward(self, x):
        return self.body(x)


NETS = {
    "vgg_maxpool": (VGGLike, (3, 16, 16)),
    "resnet_block": (ResBlockNet, (3, 12, 12)),
    "inverted_residual": (InvertedResidualNet, (3, 10, 10)),
    "concat": (ConcatNet, (3, 8, 8)),
    "conv1d": (Conv1dNet, (2, 16)),
}


def make(name: str, seed: int = 0, dtype=torch.float64):
    torch.manual_seed(seed)
    cls, shape = NETS[name]
    return randomize_bn(cls(), seed).to(dtype), shape
