"""Every model of the zoo converts, and its simulation equals its quantized twin (random weights)."""

import pytest
import torch

import spikeconverter as sc

from nets import randomize_bn
from test_equivalence import check_identical


def build(name, dataset, seed=0):
    torch.manual_seed(seed)
    m = sc.models.create(name, dataset=dataset, num_classes=10)
    return randomize_bn(m, seed).double()


@pytest.mark.parametrize("name", ["resnet20", "vgg16", "mobilenet_v2", "resnet34"])
def test_zoo_converts_at_32px(name):
    model = build(name, "cifar10")
    g = torch.Generator().manual_seed(0)
    snn = sc.convert(model, torch.randn(8, 3, 32, 32, generator=g, dtype=torch.float64), timesteps=3)
    check_identical(snn, torch.randn(2, 3, 32, 32, generator=g, dtype=torch.float64))


@pytest.mark.parametrize("name,depth", [("resnet34", 33), ("mobilenet_v2", 35)])
def test_zoo_converts_at_224px(name, depth):
    """ImageNet shapes: ResNet-34's stem max-pool, MobileNet-v2's stride-2 stem."""
    model = build(name, "imagenet")
    g = torch.Generator().manual_seed(1)
    snn = sc.convert(model, torch.randn(2, 3, 224, 224, generator=g, dtype=torch.float64), timesteps=2)
    assert snn.spiking_depth == depth
    check_identical(snn, torch.randn(1, 3, 224, 224, generator=g, dtype=torch.float64))


def test_vgg16_224_fast_path():
    model = build("vgg16", "imagenet").float()
    g = torch.Generator().manual_seed(2)
    snn = sc.convert(model, torch.randn(2, 3, 224, 224, generator=g), timesteps=4)
    x = torch.randn(1, 3, 224, 224, generator=g)
    assert snn.spiking_depth == 15  # 13 conv + 2 hidden fc
    assert torch.equal(snn(x), snn.quantized_ann()(x))


@pytest.mark.slow
def test_vgg16_224_simulation():
    model = build("vgg16", "imagenet")
    g = torch.Generator().manual_seed(3)
    snn = sc.convert(model, torch.randn(2, 3, 224, 224, generator=g, dtype=torch.float64), timesteps=2)
    check_identical(snn, torch.randn(1, 3, 224, 224, generator=g, dtype=torch.float64))


def test_create_and_available():
    assert set(sc.models.available()) == {"vgg16", "resnet20", "resnet34", "mobilenet_v2"}
    m = sc.models.create("resnet20", dataset="cifar100")
    assert m.fc.out_features == 100
    m = sc.models.create("resnet20", dataset="fashion_mnist")
    assert m.stem[0].in_channels == 1
    assert m(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    with pytest.raises(ValueError, match="unknown model"):
        sc.models.create("alexnet")
    with pytest.raises(ValueError, match="no shipped checkpoint.*shipped:"):
        sc.models.create("resnet34", dataset="imagenet", pretrained=True)


def test_parameter_counts_match_the_literature():
    count = lambda m: sum(p.numel() for p in m.parameters())  # noqa: E731
    # ResNet-20 with 1x1 projection shortcuts: 0.27 M; ResNet-34: 21.8 M; MobileNet-v2: 3.5 M; VGG-16: 138 M
    assert 0.26e6 < count(sc.models.create("resnet20")) < 0.29e6
    assert 21.7e6 < count(sc.models.create("resnet34", dataset="imagenet")) < 21.9e6
    assert 3.4e6 < count(sc.models.create("mobilenet_v2", dataset="imagenet")) < 3.6e6
