"""Models written the way model libraries write them: shape asserts inside norm-act blocks, heads
and decoders that branch on shapes, fixed filters kept as buffers, weights computed in forward().
Each converts, computes what eager PyTorch computes, and is exact layer by layer; value-dependent
control flow is refused naming its line."""

import pytest
import torch
import torch.nn.functional as F
from torch import nn

import spikeconverter as sc

from nets import randomize_bn
from test_equivalence import check_identical


class BatchNormAct2d(nn.BatchNorm2d):
    """BN + ReLU in one module, checking its input like library norm-act layers do."""

    def forward(self, x):
        torch._assert(x.ndim == 4, f"expected 4D input (got {x.ndim}D input)")
        return F.relu(super().forward(x))


class AssertNet(nn.Module):
    """torch._assert on ndim inside a BN-act block; a plain assert on the input size (a stem that
    checks H, W against its configured image size); a shape unpack and a view from it."""

    def __init__(self, img_size=(16, 16)):
        super().__init__()
        self.img_size = img_size
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1, bias=False), BatchNormAct2d(8)
        self.conv2, self.bn2 = nn.Conv2d(8, 8, 3, stride=2, padding=1, bias=False), BatchNormAct2d(8)
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        B, C, H, W = x.shape
        assert H == self.img_size[0] and W == self.img_size[1], f"input size ({H}*{W}) doesn't match the model"
        x = self.bn2(self.conv2(self.bn1(self.conv1(x))))
        x = x.view(B, x.shape[1], -1).mean(-1)  # B stays the batch: any batch size runs
        return self.fc(x)


class ConvMlpHead(nn.Module):
    """A VGG-style head: pools only when the feature map is smaller than its kernel."""

    def __init__(self, cin=8, hidden=16, kernel_size=3, classes=5):
        super().__init__()
        self.kernel_size = kernel_size
        self.fc1 = nn.Conv2d(cin, hidden, kernel_size)
        self.fc2 = nn.Conv2d(hidden, classes, 1)

    def forward(self, x):
        if x.shape[-2] < self.kernel_size or x.shape[-1] < self.kernel_size:
            output_size = (max(self.kernel_size, x.shape[-2]), max(self.kernel_size, x.shape[-1]))
            x = F.adaptive_avg_pool2d(x, output_size)
        x = F.relu(self.fc1(x))
        return self.fc2(x).mean((2, 3))


class VggNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.features = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2),
                                      nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU(), nn.MaxPool2d(2))
        self.head = ConvMlpHead()

    def forward(self, x):
        return self.head(self.features(x))


class DecoderBlock(nn.Module):
    """An FPN / LinkNet-style decoder step: upsample, resize to the skip's size when they differ."""

    def __init__(self, cin, cskip, cout):
        super().__init__()
        self.conv = nn.Sequential(nn.Conv2d(cin + cskip, cout, 3, padding=1, bias=False), nn.BatchNorm2d(cout),
                                  nn.ReLU(inplace=True))

    def forward(self, x, skip):
        x = F.interpolate(x, scale_factor=2, mode="nearest")
        if x.shape[-2:] != skip.shape[-2:]:
            x = F.interpolate(x, size=skip.shape[-2:], mode="nearest")
        if x.shape != skip.shape and len(x.shape) == 4:  # the whole shape, batch entry included
            x = torch.cat([x, skip], dim=1)
        return self.conv(x)


class FpnNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.enc1 = nn.Sequential(nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.enc2 = nn.Sequential(nn.Conv2d(8, 16, 3, stride=2, padding=1), nn.BatchNorm2d(16), nn.ReLU())
        self.dec = DecoderBlock(16, 8, 8)
        self.out = nn.Conv2d(8, 2, 1)

    def forward(self, x):
        s = self.enc1(x)
        return self.out(self.dec(self.enc2(s), s))


class BlurPool2d(nn.Module):
    """Anti-aliased downsampling: a fixed binomial filter kept as a buffer, applied per channel."""

    def __init__(self, channels, stride=2):
        super().__init__()
        self.channels, self.stride = channels, stride
        coeffs = torch.tensor([1.0, 2.0, 1.0])
        filt = (coeffs[:, None] * coeffs[None, :]) / 16
        self.register_buffer("filt", filt[None, None, :, :].repeat(channels, 1, 1, 1), persistent=False)

    def forward(self, x):
        x = F.pad(x, (1, 1, 1, 1), mode="reflect")
        return F.conv2d(x, self.filt.to(x.dtype), stride=self.stride, groups=self.channels)


class StdConv2d(nn.Conv2d):
    """Weight standardisation: the weight actually used is computed from the parameter in forward()."""

    def forward(self, x):
        w = self.weight
        w = (w - w.mean(dim=(1, 2, 3), keepdim=True)) / (w.std(dim=(1, 2, 3), keepdim=True) + 1e-5)
        return F.conv2d(x, w, self.bias, self.stride, self.padding, self.dilation, self.groups)


class BlurResNet(nn.Module):
    def __init__(self):
        super().__init__()
        self.stem = nn.Sequential(StdConv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8), nn.ReLU())
        self.blur = BlurPool2d(8)
        self.conv = nn.Sequential(nn.Conv2d(8, 8, 3, padding=1), nn.BatchNorm2d(8))
        self.fc = nn.Linear(8, 5)

    def forward(self, x):
        x = self.blur(self.stem(x))
        x = F.relu(x + self.conv(x))
        return self.fc(torch.flatten(F.adaptive_avg_pool2d(x, 1), 1))


class NarrowNet(nn.Module):
    """Channel halves taken with torch.narrow (GhostNet-style split) and one row kept with torch.select."""

    def __init__(self):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(3, 8, 3, padding=1), nn.BatchNorm2d(8)
        self.conv2 = nn.Conv2d(4, 4, 3, padding=1)
        self.fc = nn.Linear(8 * 6, 5)

    def forward(self, x):
        x = F.relu(self.bn1(self.conv1(x)))
        x = torch.cat([torch.narrow(x, 1, 0, 4), F.relu(self.conv2(torch.narrow(x, 1, 4, 4)))], 1)
        row = torch.select(x, 2, 1)  # [B, 8, W]
        return self.fc(row.flatten(1))


PATTERNS = {"assert_norm_act": (AssertNet, (3, 16, 16)), "vgg_shape_head": (VggNet, (3, 8, 8)),
            "fpn_resize_to_skip": (FpnNet, (3, 9, 9)), "blur_pool_and_std_conv": (BlurResNet, (3, 10, 10)),
            "narrow_and_select": (NarrowNet, (3, 6, 6))}


def build(name):
    torch.manual_seed(0)
    cls, shape = PATTERNS[name]
    return randomize_bn(cls()).double(), shape


@pytest.mark.parametrize("name", sorted(PATTERNS))
def test_library_pattern_converts_and_is_exact(name):
    model, shape = build(name)
    g = torch.Generator().manual_seed(1)
    calib = torch.randn((16,) + shape, generator=g, dtype=torch.float64)
    snn = sc.convert(model, calib, timesteps=6)
    for batch in (3, 1):  # the batch size stays open: specialised to the image shape only
        x = torch.randn((batch,) + shape, generator=g, dtype=torch.float64)
        with torch.no_grad():
            assert torch.allclose(snn.ann()(x), model(x), rtol=0, atol=1e-12), "the converted graph changed the function"
        check_identical(snn, x)


def test_the_branch_the_real_input_takes_is_the_one_converted():
    model, shape = build("vgg_shape_head")  # 8x8 -> 2x2 after the features: smaller than the kernel, pooled
    snn = sc.convert(model, torch.randn((8,) + shape, dtype=torch.float64), timesteps=6)
    assert any("adaptive_avg_pool2d" in str(n.target) for n in snn.gm.graph.nodes)
    big = (3, 16, 16)  # 4x4 after the features: no pooling
    snn_big = sc.convert(model, torch.randn((8,) + big, dtype=torch.float64), timesteps=6)
    assert not any("adaptive_avg_pool2d" in str(n.target) for n in snn_big.gm.graph.nodes)
    with pytest.raises(ValueError, match=r"expected \(batch, 3, 8, 8\)"):  # specialised: another shape is refused
        snn(torch.randn((1,) + big, dtype=torch.float64))


def test_constant_filters_became_ordinary_layers_and_survive_saving(tmp_path):
    model, shape = build("blur_pool_and_std_conv")
    snn = sc.convert(model, torch.randn((16,) + shape, dtype=torch.float64), timesteps=6)
    assert not any(n.op == "get_attr" for n in snn.gm.graph.nodes)
    snn.save(tmp_path / "n.snn")
    x = torch.randn((2,) + shape, dtype=torch.float64)
    same = sc.load(tmp_path / "n.snn")
    assert torch.equal(same(x), snn(x)) and torch.equal(same.simulate(x).logits, snn.simulate(x).logits)
    # fixed point: the blur feeds a conv with no spiking layer between, a chain it refuses by name
    with pytest.raises(ValueError, match="functional_conv_1"):
        sc.convert(model, torch.randn((16,) + shape, dtype=torch.float64), timesteps=6, fixed_point=True)


class ValueBranch(nn.Module):
    def __init__(self):
        super().__init__()
        self.conv = nn.Conv2d(3, 4, 3)

    def forward(self, x):
        y = F.relu(self.conv(x))
        if y.mean() > 0.5:
            y = y * 2
        return y.flatten(1)


def test_control_flow_on_values_is_refused_naming_the_line():
    with pytest.raises(sc.UnsupportedOperationError) as e:
        sc.convert(ValueBranch(), torch.randn(4, 3, 8, 8), timesteps=4)
    msg = str(e.value)
    assert "control flow on tensor values" in msg and "test_library_patterns.py:" in msg and "y.mean() > 0.5" in msg


def test_several_unsupported_ops_name_the_first_and_count_them():
    class Gated(nn.Module):
        def __init__(self):
            super().__init__()
            self.conv = nn.Conv2d(3, 4, 3)

        def forward(self, x):
            y = F.silu(self.conv(x))
            return (y * torch.sigmoid(y.mean((2, 3), keepdim=True))).flatten(1).softmax(1)

    with pytest.raises(sc.UnsupportedOperationError) as e:
        sc.convert(Gated(), torch.randn(4, 3, 8, 8), timesteps=4)
    msg = str(e.value)
    assert msg.startswith("node 'silu'") and "the first of 4 unsupported ops" in msg and "\n" not in msg, msg


@pytest.mark.parametrize("name", ["assert_norm_act", "vgg_shape_head", "fpn_resize_to_skip"])
def test_library_pattern_in_fixed_point_is_bit_exact(name):
    model, shape = build(name)
    g = torch.Generator().manual_seed(2)
    snn = sc.convert(model, torch.randn((16,) + shape, generator=g, dtype=torch.float64), timesteps=6,
                     fixed_point=True)
    x = torch.randn((2,) + shape, generator=g, dtype=torch.float64)
    assert torch.equal(snn.simulate(x).logits, snn(x))
