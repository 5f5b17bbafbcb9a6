"""The classifier contract: forward = head(features), shapes, stage-wise shaping, configs."""

from __future__ import annotations

import dataclasses
import json

import pytest
import torch
import torchvision
from torch import nn

from ood_core.ash import ash_p, make_shaper
from ood_core.classifiers import (
    CIFAR_MEAN,
    CIFAR_STD,
    IMAGENET_MEAN,
    ClassifierConfig,
    DenseNetBC100,
    ResNet18Cifar,
    SmallCNN,
    TorchvisionClassifier,
    build_classifier,
)


def _images(shape, seed=0):
    return torch.rand(*shape, generator=torch.Generator().manual_seed(seed))


# (model factory, input shape, expected feature dimension); all tiny except where noted
SMALL_MODELS = {
    "resnet18_cifar": (lambda: ResNet18Cifar(num_classes=5, width=4), (2, 3, 32, 32), 32),
    "densenet_small": (lambda: DenseNetBC100(num_classes=5, growth_rate=4, depth=16), (2, 3, 32, 32), 16),
    "small_cnn": (lambda: SmallCNN(num_classes=5, width=4), (2, 1, 28, 28), 16),
}


@pytest.fixture(scope="module")
def small_models():
    torch.manual_seed(0)
    return {name: (factory().eval(), shape, dim) for name, (factory, shape, dim) in SMALL_MODELS.items()}


@pytest.fixture(scope="module")
def torchvision_models():
    torch.manual_seed(0)
    return {
        "resnet50": TorchvisionClassifier("resnet50", num_classes=7).eval(),
        "mobilenet_v2": TorchvisionClassifier("mobilenet_v2", num_classes=7).eval(),
    }


@pytest.mark.parametrize("name", list(SMALL_MODELS))
def test_forward_is_head_of_features(name, small_models):
    model, shape, dim = small_models[name]
    x = _images(shape)
    with torch.no_grad():
        f = model.features(x)
        logits = model(x)
    assert f.shape == (shape[0], dim) and model.feature_dim == dim
    assert logits.shape == (shape[0], 5)
    torch.testing.assert_close(logits, model.head(f))
    assert isinstance(model.fc, nn.Linear) and model.stages[-1] == "penultimate"


@pytest.mark.parametrize("name", ["resnet50", "mobilenet_v2"])
def test_torchvision_forward_is_head_of_features(name, torchvision_models):
    model = torchvision_models[name]
    x = _images((2, 3, 64, 64))
    with torch.no_grad():
        f = model.features(x)
        logits = model(x)
    assert f.shape == (2, {"resnet50": 2048, "mobilenet_v2": 1280}[name])
    torch.testing.assert_close(logits, model.head(f))
    assert logits.shape == (2, 7)


def test_torchvision_matches_the_wrapped_network_and_loads_local_weights(tmp_path):
    torch.manual_seed(1)
    reference = torchvision.models.resnet18(weights=None, num_classes=4).eval()
    path = tmp_path / "resnet18.pt"
    torch.save(reference.state_dict(), path)
    model = TorchvisionClassifier("resnet18", weights=path, num_classes=4).eval()
    x = _images((2, 3, 64, 64))
    mean = torch.tensor(IMAGENET_MEAN).view(1, 3, 1, 1)
    std = torch.tensor((0.229, 0.224, 0.225)).view(1, 3, 1, 1)
    with torch.no_grad():
        torch.testing.assert_close(model(x), reference((x - mean) / std))
    assert model.stages == ("layer1", "layer2", "layer3", "layer4", "penultimate")
    with pytest.raises(ValueError, match="download"):
        TorchvisionClassifier("resnet18", weights="IMAGENET1K_V1")
    with pytest.raises(ValueError, match="not supported"):
        TorchvisionClassifier("vgg11")


def test_densenet_bc100_has_342_features():
    torch.manual_seed(0)
    model = build_classifier(ClassifierConfig(arch="densenet_bc100")).eval()
    assert model.fc.in_features == 342
    # stem + 3 blocks x 16 bottlenecks x 2 convs + 2 transitions = 99 convs, plus fc = depth 100
    assert sum(isinstance(m, nn.Conv2d) for m in model.modules()) + 1 == 100
    with torch.no_grad():
        f = model.features(_images((1, 3, 32, 32)))
    assert f.shape == (1, 342)
    assert (f >= 0).all()  # pooled after the final ReLU


@pytest.mark.parametrize("name", list(SMALL_MODELS))
def test_shaping_changes_output_and_identity_does_not(name, small_models):
    model, shape, _ = small_models[name]
    x = _images(shape, seed=2)
    with torch.no_grad():
        plain = model(x)
        for stage in model.stages:
            same = model.head(model.features(x, shaping={stage: lambda h: h}))
            torch.testing.assert_close(same, plain)
            changed = model.head(model.features(x, shaping={stage: lambda h: ash_p(h, 90)}))
            assert not torch.allclose(changed, plain), stage
        # forward itself never shapes
        torch.testing.assert_close(model(x), plain)
    with pytest.raises(ValueError, match="unknown shaping stage"):
        model.features(x, shaping={"nope": lambda h: h})


def test_shaping_hands_stage_maps_and_penultimate_vectors(small_models):
    model, shape, _ = small_models["resnet18_cifar"]
    seen = {}

    def record(stage):
        def fn(h):
            seen[stage] = tuple(h.shape)
            return h

        return fn

    with torch.no_grad():
        model.features(_images(shape), shaping={s: record(s) for s in model.stages})
    assert seen == {
        "layer1": (2, 4, 32, 32),
        "layer2": (2, 8, 16, 16),
        "layer3": (2, 16, 8, 8),
        "layer4": (2, 32, 4, 4),
        "penultimate": (2, 32),
    }


def test_torchvision_stage_shaping(torchvision_models):
    model = torchvision_models["mobilenet_v2"]
    assert model.stages[0] == "block0" and model.stages[-2] == "block18"
    x = _images((2, 3, 64, 64))
    shaper = make_shaper("ash_s", 90)
    with torch.no_grad():
        shaped = model.head(model.features(x, shaping={"penultimate": shaper}))
        expected = model.head(shaper(model.features(x)))
    torch.testing.assert_close(shaped, expected)


def test_normalisation_is_a_buffer_and_inputs_must_be_float(small_models):
    model, shape, _ = small_models["resnet18_cifar"]
    state = model.state_dict()
    torch.testing.assert_close(state["mean"].flatten(), torch.tensor(CIFAR_MEAN))
    torch.testing.assert_close(state["std"].flatten(), torch.tensor(CIFAR_STD))
    with pytest.raises(TypeError, match="float"):
        model(torch.zeros(shape, dtype=torch.uint8))
    with pytest.raises(ValueError):
        model(torch.zeros(2, 1, 32, 32))


def test_config_roundtrip_and_defaults():
    config = ClassifierConfig(arch="resnet18_cifar", width=16)
    assert config.mean == CIFAR_MEAN and config.std == CIFAR_STD
    restored = ClassifierConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config
    with pytest.raises(dataclasses.FrozenInstanceError):
        config.width = 8  # type: ignore[misc]
    assert ClassifierConfig(arch="small_cnn", in_channels=1).mean == (0.5,)
    assert ClassifierConfig(arch="torchvision:resnet50", num_classes=1000).mean == IMAGENET_MEAN
    with pytest.raises(ValueError, match="unknown arch"):
        ClassifierConfig(arch="vit")
    with pytest.raises(ValueError, match="one value per input channel"):
        ClassifierConfig(arch="small_cnn", in_channels=1, mean=(0.5, 0.5, 0.5), std=(1.0, 1.0, 1.0))
    with pytest.raises(ValueError, match="unknown ClassifierConfig field"):
        ClassifierConfig.from_dict({"arch": "small_cnn", "depth": 3})


def test_build_classifier_dispatches():
    cases = {
        ClassifierConfig(arch="resnet18_cifar", num_classes=3, width=2): (ResNet18Cifar, 16),
        ClassifierConfig(arch="small_cnn", in_channels=1, width=2, num_classes=3): (SmallCNN, 8),
        ClassifierConfig(arch="torchvision:mobilenet_v2", num_classes=3): (TorchvisionClassifier, 1280),
    }
    for config, (cls, dim) in cases.items():
        model = build_classifier(config)
        assert isinstance(model, cls) and model.feature_dim == dim and model.fc.out_features == 3
    with pytest.raises(ValueError):
        build_classifier(ClassifierConfig(arch="small_cnn", in_channels=1), weights="model.pt")
