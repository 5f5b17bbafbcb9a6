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
    AirbenchNet,
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
    "airbench": (lambda: AirbenchNet(num_classes=5, width=4), (2, 3, 32, 32), 16),
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


def test_airbench_stage_shapes_and_nonnegative_features(small_models):
    model, shape, _ = small_models["airbench"]
    seen = {}

    def record(stage):
        def fn(h):
            seen[stage] = (tuple(h.shape), bool((h >= 0).all()))
            return h

        return fn

    with torch.no_grad():
        f = model.features(_images(shape, seed=3), shaping={s: record(s) for s in model.stages})
    # 2x2 whitening (32 -> 31), then a 2x2 max-pool in each group: 31 -> 15 -> 7 -> 3
    assert seen == {
        "block1": ((2, 4, 15, 15), True),
        "block2": ((2, 16, 7, 7), True),
        "block3": ((2, 16, 3, 3), True),
        "penultimate": ((2, 16), True),
    }
    assert f.shape == (2, 16) and (f >= 0).all() and (f > 0).any()


def _patch_second_moment(h: torch.Tensor) -> torch.Tensor:
    """E[p p^T] over all 2x2 patches of ``h`` [B, C, H, W], patch values ordered (channel, row, col)."""
    b, c, height, width = h.shape
    parts = [h[:, :, di : di + height - 1, dj : dj + width - 1] for di in (0, 1) for dj in (0, 1)]
    patches = torch.stack(parts, dim=2).permute(0, 3, 4, 1, 2).reshape(-1, 4 * c).double()
    return patches.T @ patches / len(patches)


def test_airbench_whitening_filters_whiten_the_patches():
    torch.manual_seed(0)
    model = AirbenchNet(num_classes=3, width=4).eval()
    # correlated colour images: a smooth random field, channels mixed
    x = torch.nn.functional.avg_pool2d(_images((40, 3, 34, 34), seed=4), 3, 1)
    x = torch.einsum("dc,bchw->bdhw", torch.tensor([[1.0, 0.2, 0.1], [0.5, 0.5, 0.0], [0.3, 0.3, 0.4]]), x)
    model.initialize_from_data(x, chunk=7)  # chunked accumulation must not matter
    sigma = _patch_second_moment(model.normalise(x))
    eigenvalues = torch.linalg.eigvalsh(sigma)
    w = model.whiten_weight.double().reshape(24, 12)
    # the first 12 filters are diag(lambda + eps)^(-1/2) V^T: W Sigma W^T = diag(lambda / (lambda + eps))
    expected = torch.diag(eigenvalues / (eigenvalues + model.eps))
    torch.testing.assert_close(w[:12] @ sigma @ w[:12].T, expected, atol=1e-5, rtol=1e-5)  # float32 filters
    torch.testing.assert_close(w[12:], -w[:12])  # and their negatives
    # the whitening layer's outputs on those images have that (near-identity) second moment too
    with torch.no_grad():
        z = torch.nn.functional.conv2d(model.normalise(x), model.whiten_weight[:12]).double()
    z = z.permute(0, 2, 3, 1).reshape(-1, 12)
    torch.testing.assert_close(z.T @ z / len(z), expected, atol=1e-5, rtol=1e-5)


def test_airbench_unfitted_whitening_is_the_patch_basis_and_convs_start_as_identity():
    model = AirbenchNet(num_classes=3, width=4)
    x = _images((2, 3, 32, 32), seed=5)
    h = model.normalise(x)
    z = torch.nn.functional.conv2d(h, model.whiten_weight)
    # channel (c, di, dj) of the first half is pixel (i + di, j + dj) of channel c; the second half its negative
    torch.testing.assert_close(z[:, 0], h[:, 0, :31, :31])
    torch.testing.assert_close(z[:, 3], h[:, 0, 1:, 1:])
    torch.testing.assert_close(z[:, 4], h[:, 1, :31, :31])
    torch.testing.assert_close(z[:, 12:], -z[:, :12])
    conv = model.block2.conv1.weight  # 4 -> 16 channels: the first 4 filters are Dirac kernels
    expected = torch.zeros(4, 4, 3, 3)
    expected[torch.arange(4), torch.arange(4), 1, 1] = 1.0
    torch.testing.assert_close(conv[:4].detach(), expected)


def test_airbench_state_dict_round_trip_keeps_the_fitted_whitening(tmp_path):
    torch.manual_seed(0)
    config = ClassifierConfig(arch="airbench", width=4, num_classes=5)
    model = build_classifier(config)
    model.initialize_from_data(_images((8, 3, 32, 32), seed=6))
    model.train()
    with torch.no_grad():
        model(_images((8, 3, 32, 32), seed=7))  # move the BatchNorm running statistics
    model.eval()
    path = tmp_path / "model.pt"
    torch.save(model.state_dict(), path)
    restored = build_classifier(ClassifierConfig.from_dict(json.loads(json.dumps(config.to_dict()))))
    restored.load_state_dict(torch.load(path, weights_only=True))
    restored.eval()
    assert "whiten_weight" in model.state_dict() and not torch.equal(
        restored.whiten_weight, AirbenchNet(num_classes=5, width=4).whiten_weight)
    x = _images((3, 3, 32, 32), seed=8)
    with torch.no_grad():
        torch.testing.assert_close(restored.features(x), model.features(x))
        torch.testing.assert_close(restored(x), model(x))


def test_data_initialisation_is_a_no_op_for_the_other_classifiers(small_models):
    for name in ("resnet18_cifar", "small_cnn"):
        model, shape, _ = small_models[name]
        before = {k: v.clone() for k, v in model.state_dict().items()}
        model.initialize_from_data(_images(shape))
        assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


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
        ClassifierConfig.from_dict({"arch": "small_cnn", "layers": 3})


def test_build_classifier_dispatches():
    cases = {
        ClassifierConfig(arch="resnet18_cifar", num_classes=3, width=2): (ResNet18Cifar, 16),
        ClassifierConfig(arch="small_cnn", in_channels=1, width=2, num_classes=3): (SmallCNN, 8),
        ClassifierConfig(arch="airbench", width=2, num_classes=3): (AirbenchNet, 8),
        ClassifierConfig(arch="torchvision:mobilenet_v2", num_classes=3): (TorchvisionClassifier, 1280),
    }
    for config, (cls, dim) in cases.items():
        model = build_classifier(config)
        assert isinstance(model, cls) and model.feature_dim == dim and model.fc.out_features == 3
    with pytest.raises(ValueError):
        build_classifier(ClassifierConfig(arch="small_cnn", in_channels=1), weights="model.pt")


def test_classifier_training_fits_the_whitening_and_smooths_the_labels():
    from ood_core import data, families
    from ood_core.experiment import ClassifierRun
    from ood_core.train import TrainConfig

    run = ClassifierRun("cifar10", ClassifierConfig("airbench", width=2), TrainConfig(epochs=1, batch_size=8, lr=0.1),
                        n_train=64, n_curve=8, label_smoothing=0.2)
    parts = families.CLASSIFIER.training(run)
    torch.manual_seed(0)
    model = build_classifier(run.model)
    parts.init_fn(model, None)  # fitted on the run's training images, not on the (augmented) batch
    x = data.load("cifar10", "train").subset(64, seed=0).x.float() / 255
    sigma = _patch_second_moment(model.normalise(x))
    eigenvalues = torch.linalg.eigvalsh(sigma)
    w = model.whiten_weight.double().reshape(24, 12)[:12]
    torch.testing.assert_close(w @ sigma @ w.T, torch.diag(eigenvalues / (eigenvalues + model.eps)),
                               atol=1e-5, rtol=1e-5)
    # smoothed cross-entropy: -(1 - a) log p_y - (a / K) sum_k log p_k, averaged over the batch
    images, labels = parts.dataset.tensors[0][:8], parts.dataset.tensors[1][:8]
    model.eval()
    with torch.no_grad():
        log_p = torch.log_softmax(model(images.float() / 255), dim=1)
        expected = (-(0.8 * log_p[torch.arange(8), labels]) - 0.2 * log_p.mean(dim=1)).mean()
        torch.testing.assert_close(parts.loss(model, (images, labels)), expected)
        plain = families.CLASSIFIER.training(run.replace(label_smoothing=0.0)).loss(model, (images, labels))
        torch.testing.assert_close(plain, -log_p[torch.arange(8), labels].mean())
