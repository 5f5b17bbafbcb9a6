"""Mathematical tests of ood_core.flows: invertibility, log-dets, ActNorm init, config."""

from __future__ import annotations

import json
import math

import pytest
import torch

from _flow_checks import check_flow, jacobian_logdet, perturb_parameters
from ood_core.flows import (
    LAYER_TERMS,
    PRIOR_TERMS,
    ActNorm,
    Coupling,
    FlowStep,
    Glow,
    GlowConfig,
    InvConv1x1,
    Split,
    Squeeze,
    build_glow,
    gaussian_log_prob,
    initialize_actnorm,
)

torch.set_num_threads(1)


def _gen(seed: int = 0) -> torch.Generator:
    return torch.Generator().manual_seed(seed)


def _data(shape, seed=0, dtype=torch.float64) -> torch.Tensor:
    return torch.randn(shape, generator=_gen(seed), dtype=dtype)


def _ready(module: torch.nn.Module, x: torch.Tensor, seed: int = 1, scale: float = 0.1):
    """Cast to x's dtype, run the data-dependent init on x, then randomise every parameter."""
    module = module.to(x.dtype)
    with torch.no_grad():
        module(x)
    perturb_parameters(module, scale, _gen(seed))
    return module


def _layers():
    torch.manual_seed(0)
    return {
        "actnorm": ActNorm(4),
        "invconv_lu": InvConv1x1(4, lu=True),
        "invconv_plain": InvConv1x1(4, lu=False),
        "coupling_affine": Coupling(4, width=8, coupling="affine"),
        "coupling_additive": Coupling(4, width=8, coupling="additive"),
        "coupling_affine_odd": Coupling(5, width=8, coupling="affine"),
        "squeeze": Squeeze(),
        "split_learned": Split(4, learn_prior=True),
        "split_fixed": Split(4, learn_prior=False),
        "flowstep_affine": FlowStep(4, width=8, coupling="affine", lu=True),
        "flowstep_additive": FlowStep(4, width=8, coupling="additive", lu=False),
    }


LAYER_NAMES = list(_layers())


def _layer_input(name, batch, dtype, seed=0):
    channels = 5 if name.endswith("_odd") else 4
    return _data((batch, channels, 4, 4), seed=seed, dtype=dtype) * 1.5 + 0.3


# --------------------------------------------------------------------------------------------
# Every layer: invertibility, log-det bookkeeping, dtype, and the Jacobian
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("dtype", [torch.float32, torch.float64])
@pytest.mark.parametrize("name", LAYER_NAMES)
def test_layer_contract(name, dtype):
    x = _layer_input(name, 3, dtype)
    layer = _ready(_layers()[name], x)
    atol = 1e-4 if dtype == torch.float32 else 1e-10
    check_flow(layer, x, atol=atol)


@pytest.mark.parametrize("name", LAYER_NAMES)
def test_layer_logdet_matches_autograd_jacobian(name):
    x = _layer_input(name, 3, torch.float64)
    layer = _ready(_layers()[name], x)
    log_abs_det, logdet = jacobian_logdet(layer, x[:1])
    torch.testing.assert_close(logdet, log_abs_det, atol=1e-9, rtol=1e-9)


def test_layers_are_not_trivial_after_perturbation():
    # Guard against the Jacobian test passing on identity maps.
    x = _layer_input("coupling_affine", 3, torch.float64)
    for name in ("coupling_affine", "actnorm", "invconv_lu"):
        layer = _ready(_layers()[name], x)
        z, logdet = layer(x)
        assert (z - x).abs().max() > 1e-2
        assert logdet.abs().max() > 1e-3


def test_squeeze_ordering_and_split_halves():
    x = torch.arange(2 * 1 * 4 * 4, dtype=torch.float64).view(2, 1, 4, 4)
    z, _ = Squeeze()(x)
    assert z.shape == (2, 4, 2, 2)
    # channel 2i + j holds offset (i, j) of each 2x2 block
    for i in range(2):
        for j in range(2):
            torch.testing.assert_close(z[:, 2 * i + j], x[:, 0, i::2, j::2])
    (kept, out), _ = Split(4)(z)
    torch.testing.assert_close(kept, z[:, :2])
    torch.testing.assert_close(out, z[:, 2:])


def test_invconv_lu_weight_and_logdet():
    torch.manual_seed(3)
    layer = InvConv1x1(6, lu=True).double()
    perturb_parameters(layer, 0.3, _gen(2))
    w = layer.weight()
    sign, log_abs_det = torch.linalg.slogdet(w)
    torch.testing.assert_close(log_abs_det, layer.log_s.sum())
    x = _data((2, 6, 3, 5))
    z, logdet = layer(x)
    torch.testing.assert_close(z, torch.einsum("ij,bjhw->bihw", w, x))
    expected = torch.full((2,), 15 * log_abs_det.item(), dtype=torch.float64)  # H * W = 15
    torch.testing.assert_close(logdet, expected)
    # LU constants are buffers, so they travel with the state dict
    buffers = dict(layer.named_buffers())
    assert {"perm", "sign_s", "lower_mask", "upper_mask", "eye"} <= set(buffers)


def test_affine_coupling_formula():
    torch.manual_seed(0)
    x = _layer_input("coupling_affine", 2, torch.float64)
    layer = _ready(Coupling(4, width=8, coupling="affine"), x)
    h = layer.net(x[:, :2])
    shift, scale = h[:, 0::2], torch.sigmoid(h[:, 1::2] + 2.0)
    z, logdet = layer(x)
    torch.testing.assert_close(z[:, :2], x[:, :2])
    torch.testing.assert_close(z[:, 2:], (x[:, 2:] + shift) * scale)
    torch.testing.assert_close(logdet, torch.log(scale).flatten(1).sum(1))


def test_zero_init_coupling_is_identity_or_constant_scale():
    torch.manual_seed(0)
    x = _layer_input("coupling_affine", 2, torch.float64)
    additive = Coupling(4, width=8, coupling="additive").double()
    z, logdet = additive(x)
    torch.testing.assert_close(z, x)
    assert torch.equal(logdet, torch.zeros(2, dtype=torch.float64))
    affine = Coupling(4, width=8, coupling="affine").double()
    z, logdet = affine(x)
    scale = torch.sigmoid(torch.tensor(2.0, dtype=torch.float64))
    torch.testing.assert_close(z[:, 2:], x[:, 2:] * scale)
    torch.testing.assert_close(logdet, torch.full((2,), 32 * math.log(scale), dtype=torch.float64))


# --------------------------------------------------------------------------------------------
# The folded fast paths compute the same functions as the layers one by one
# --------------------------------------------------------------------------------------------


@pytest.mark.parametrize("coupling,lu", [("affine", True), ("additive", False), ("affine", False)])
@pytest.mark.parametrize("channels_last", [False, True])
def test_folded_flow_step_equals_its_three_layers(coupling, lu, channels_last):
    # FlowStep.forward runs ActNorm + 1x1 conv as one convolution and the coupling network with its
    # ActNorms folded into the convolutions; the layers applied one by one are the definition.
    torch.manual_seed(0)
    x = _layer_input("flowstep", 3, torch.float64)
    step = _ready(FlowStep(4, width=8, coupling=coupling, lu=lu), x, scale=0.2)
    expected, expected_logdet = x, torch.zeros(3, dtype=torch.float64)
    for layer in (step.actnorm, step.invconv):
        expected, ld = layer(expected)
        expected_logdet = expected_logdet + ld
    x_a, x_b = expected[:, :2], expected[:, 2:]
    net = step.coupling.net
    h = net.norm_in(net.conv_in(x_a))[0].relu()
    h = net.norm_hidden(net.conv_hidden(h))[0].relu()
    h = net.conv_out.conv(h) * torch.exp(3.0 * net.conv_out.logs)
    if coupling == "affine":
        shift, scale = h[:, 0::2], torch.sigmoid(h[:, 1::2] + 2.0)
        y_b = (x_b + shift) * scale
        expected_logdet = expected_logdet + torch.log(scale).flatten(1).sum(1)
    else:
        y_b = x_b + h
    inputs = x.contiguous(memory_format=torch.channels_last) if channels_last else x
    z, logdet = step(inputs)
    torch.testing.assert_close(z, torch.cat([x_a, y_b], dim=1), atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(logdet, expected_logdet, atol=1e-12, rtol=1e-12)
    torch.testing.assert_close(net(x_a), h, atol=1e-12, rtol=1e-12)


def test_channels_last_squeeze_has_the_values_of_squeeze():
    from ood_core.flows import _squeeze_channels_last

    x = _data((2, 3, 8, 6))
    expected, _ = Squeeze()(x)
    for source in (x, x.contiguous(memory_format=torch.channels_last), _data((2, 5, 8, 6))[:, 1:4]):
        z = _squeeze_channels_last(source)
        assert z.is_contiguous(memory_format=torch.channels_last)
        torch.testing.assert_close(z, Squeeze()(source)[0], atol=0, rtol=0)
    torch.testing.assert_close(_squeeze_channels_last(x), expected, atol=0, rtol=0)


def test_glow_latents_are_contiguous_and_log_prob_matches_the_layer_path():
    model = _ready_glow(_tiny_config(image_shape=(3, 8, 8)), dtype=torch.float64)
    x = _data((3, 3, 8, 8), seed=8) * 0.3
    zs, logdet = model(x)
    assert all(z.is_contiguous() for z in zs)
    # the layer-by-layer path of log_prob_terms (plain Squeeze, unfolded layers) agrees
    terms = model.log_prob_terms(x)
    torch.testing.assert_close(sum(t.value for t in terms if t.kind in LAYER_TERMS), logdet, atol=1e-10, rtol=0)


# --------------------------------------------------------------------------------------------
# ActNorm data-dependent initialisation and state_dict
# --------------------------------------------------------------------------------------------


def test_actnorm_data_dependent_init_standardises_the_batch():
    x = _data((8, 3, 5, 5)) * torch.tensor([0.5, 2.0, 7.0]).view(1, 3, 1, 1) + 4.0
    layer = ActNorm(3).double()
    assert not bool(layer.initialized)
    z, logdet = layer(x)
    assert bool(layer.initialized)
    zeros, ones = torch.zeros(3, dtype=torch.float64), torch.ones(3, dtype=torch.float64)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), zeros, atol=1e-12, rtol=0)
    std = x.std(dim=(0, 2, 3), unbiased=False)
    z_std = z.std(dim=(0, 2, 3), unbiased=False)
    # unit std up to the 1e-6 guard of the official code: std / (std + 1e-6)
    torch.testing.assert_close(z_std, std / (std + 1e-6), atol=1e-12, rtol=0)
    torch.testing.assert_close(z_std, ones, atol=1e-5, rtol=0)
    expected = -25 * torch.log(std + 1e-6).sum()
    torch.testing.assert_close(logdet, expected.expand(8))
    # a second batch does not re-initialise
    before = layer.bias.detach().clone()
    layer(x * 3.0 - 1.0)
    assert torch.equal(layer.bias, before)


def test_actnorm_flag_is_a_buffer_in_state_dict():
    layer = ActNorm(2)
    layer(_data((4, 2, 3, 3), dtype=torch.float32))
    state = layer.state_dict()
    assert "initialized" in state and bool(state["initialized"])
    fresh = ActNorm(2)
    fresh.load_state_dict(state)
    assert bool(fresh.initialized)
    # loading an uninitialised state into an initialised layer makes it initialise again
    layer.load_state_dict(ActNorm(2).state_dict())
    x = _data((4, 2, 3, 3), seed=9, dtype=torch.float32) * 3.0 + 1.0
    z, _ = layer(x)
    assert bool(layer.initialized)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(2), atol=1e-5, rtol=0)


def _tiny_config(**overrides) -> GlowConfig:
    base = dict(image_shape=(1, 8, 8), levels=2, steps=2, width=8)
    base.update(overrides)
    return GlowConfig(**base)


def test_walk_yields_forwards_latents_and_logdet_level_by_level():
    model = _ready_glow(_tiny_config(levels=3, image_shape=(2, 8, 8)))
    x = _data((3, 2, 8, 8), seed=7) * 0.3
    zs, logdet = model(x)
    outs = list(model.walk(x))
    assert [o.index for o in outs] == [0, 1, 2] and outs[-1].z is None and outs[-1].level.split is None
    for o, z in zip(outs, zs):
        torch.testing.assert_close(o.z if o.z is not None else o.h, z)
    torch.testing.assert_close(outs[-1].logdet, logdet)
    # lazily: taking one level runs one level
    first = next(model.walk(x))
    torch.testing.assert_close(first.h, outs[0].h)
    assert tuple(first.h.shape[1:]) == (4, 4, 4)  # kept half of the 8 squeezed channels


def test_glow_state_dict_round_trip_keeps_outputs_and_skips_reinit():
    torch.manual_seed(0)
    config = _tiny_config(image_shape=(3, 8, 8))
    model = Glow(config)
    x_init = _data((4, 3, 8, 8), seed=1, dtype=torch.float32) * 0.3
    initialize_actnorm(model, x_init)
    perturb_parameters(model, 0.05, _gen(2))
    state = {k: v.clone() for k, v in model.state_dict().items()}

    torch.manual_seed(123)  # a fresh model starts from different random weights
    fresh = build_glow(json.loads(json.dumps(config.to_dict())))
    fresh.load_state_dict(state)
    assert all(bool(m.initialized) for m in fresh.modules() if isinstance(m, ActNorm))

    x_other = _data((5, 3, 8, 8), seed=3, dtype=torch.float32) * 0.1 + 0.2  # very different stats
    for a, b in zip(model.log_prob_parts(x_other), fresh.log_prob_parts(x_other)):
        assert torch.equal(a, b)
    for key, value in fresh.state_dict().items():
        assert torch.equal(value, state[key]), f"{key} changed after a forward pass"


def test_initialize_actnorm_inits_every_actnorm_once():
    torch.manual_seed(0)
    model = Glow(_tiny_config())
    x = _data((4, 1, 8, 8), dtype=torch.float32) * 0.3
    with torch.enable_grad():
        initialize_actnorm(model, x)
    actnorms = [m for m in model.modules() if isinstance(m, ActNorm)]
    assert actnorms and all(bool(m.initialized) for m in actnorms)
    assert all(p.grad is None for p in model.parameters())
    # first ActNorm of the whole flow standardises the squeezed init batch
    first = model.levels[0].steps[0].actnorm
    squeezed, _ = Squeeze()(x)
    z, _ = first(squeezed)
    torch.testing.assert_close(z.mean(dim=(0, 2, 3)), torch.zeros(4), atol=1e-5, rtol=0)
    z_std = z.std(dim=(0, 2, 3), unbiased=False)
    torch.testing.assert_close(z_std, torch.ones(4), atol=1e-4, rtol=0)
    state = {k: v.clone() for k, v in model.state_dict().items()}
    initialize_actnorm(model, x * 5.0)  # already initialised: nothing changes
    for key, value in model.state_dict().items():
        assert torch.equal(value, state[key])


# --------------------------------------------------------------------------------------------
# Whole Glow over a grid of configurations
# --------------------------------------------------------------------------------------------

GRID = [
    (coupling, lu, levels, channels)
    for coupling in ("affine", "additive")
    for lu in (True, False)
    for levels in (1, 2)
    for channels in (1, 3)
]


def _ready_glow(config: GlowConfig, dtype=torch.float64, seed=0, batch=2, scale=0.05) -> Glow:
    torch.manual_seed(seed)
    model = Glow(config).to(dtype)
    x_init = _data((batch + 2, *config.image_shape), seed=seed + 100, dtype=dtype) * 0.3
    initialize_actnorm(model, x_init)
    perturb_parameters(model, scale, _gen(seed + 1))
    return model


@pytest.mark.parametrize("coupling,lu,levels,channels", GRID)
def test_glow_contract_grid(coupling, lu, levels, channels):
    config = _tiny_config(image_shape=(channels, 8, 8), levels=levels, coupling=coupling, lu=lu)
    model = _ready_glow(config, dtype=torch.float32)
    x = _data((2, channels, 8, 8), seed=5, dtype=torch.float32) * 0.3
    zs, logdet = check_flow(model, x, atol=1e-4)
    assert [tuple(z.shape[1:]) for z in zs] == model.latent_shapes()
    assert len(zs) == levels
    log_pz, logdet_parts = model.log_prob_parts(x)
    assert log_pz.shape == (2,) and torch.isfinite(log_pz).all()
    torch.testing.assert_close(logdet_parts, logdet)
    torch.testing.assert_close(model.log_prob(x), log_pz + logdet)
    assert len(model.invconv_weights()) == levels * config.steps


@pytest.mark.parametrize(
    "image_shape,levels,coupling,lu",
    [
        ((1, 4, 4), 1, "affine", True),
        ((3, 4, 4), 1, "additive", False),
        ((1, 4, 4), 2, "affine", False),
        ((3, 4, 4), 2, "affine", True),
    ],
)
def test_glow_logdet_matches_autograd_jacobian(image_shape, levels, coupling, lu):
    # z = concatenation of all latents (split ones first, top last), flattened.
    # A large init batch and a mild perturbation keep the Jacobian well conditioned: with tiny
    # init batches the hidden ActNorms get large gains, the sigmoid saturates and slogdet of
    # the autograd Jacobian (condition number ~1e21) is no longer accurate in float64.
    config = GlowConfig(
        image_shape=image_shape, levels=levels, steps=2, width=4, coupling=coupling, lu=lu
    )
    model = _ready_glow(config, dtype=torch.float64, scale=0.05, batch=14)
    x = _data((1, *image_shape), seed=7) * 0.3
    log_abs_det, logdet = jacobian_logdet(model, x)
    torch.testing.assert_close(logdet, log_abs_det, atol=1e-9, rtol=1e-9)


def test_cv_glow_logdet_does_not_depend_on_the_input():
    config = _tiny_config(image_shape=(3, 8, 8), coupling="additive", lu=False)
    model = _ready_glow(config, dtype=torch.float64, scale=0.1)
    _, logdet_a = model(_data((3, 3, 8, 8), seed=11) * 0.3)
    _, logdet_b = model(_data((2, 3, 8, 8), seed=12) * 2.0 + 1.0)
    assert logdet_a.abs().max() > 1.0  # non-trivial ActNorm/1x1-conv volume
    torch.testing.assert_close(logdet_a, logdet_a[:1].expand(3), atol=1e-12, rtol=0)
    torch.testing.assert_close(logdet_b, logdet_a[:2], atol=1e-12, rtol=0)
    # ... and equals the sum of the per-layer constants
    expected = sum(
        step.actnorm.log_scale.sum() * h * w
        + torch.linalg.slogdet(step.invconv.weight())[1] * h * w
        for level, (h, w) in zip(model.levels, [(4, 4), (2, 2)])
        for step in level.steps
    )
    torch.testing.assert_close(logdet_a[0], expected, atol=1e-9, rtol=0)
    # the affine model, by contrast, has an input-dependent volume
    affine = _ready_glow(_tiny_config(image_shape=(3, 8, 8)), scale=0.1)
    _, logdet_c = affine(_data((3, 3, 8, 8), seed=11) * 0.3)
    assert (logdet_c - logdet_c[0]).abs().max() > 1e-6


def test_glow_prior_is_gaussian_of_the_latents():
    # learn_prior=False: log_pz is the standard normal density of all latents
    config = _tiny_config(learn_prior=False)
    model = _ready_glow(config)
    x = _data((3, 1, 8, 8), seed=4) * 0.3
    zs, _ = model(x)
    normal = torch.distributions.Normal(0.0, 1.0)
    expected = sum(normal.log_prob(z).flatten(1).sum(1) for z in zs)
    log_pz, _ = model.log_prob_parts(x)
    torch.testing.assert_close(log_pz, expected)
    # learned priors: the split latent is scored under the conditional Gaussian of the kept half
    model = _ready_glow(_tiny_config(learn_prior=True))
    zs, _ = model(x)
    log_pz, _ = model.log_prob_parts(x)
    h = x
    for level in model.levels[:1]:
        h, _ = level.squeeze(h)
        for step in level.steps:
            h, _ = step(h)
        (kept, _), _ = level.split(h)
    mean, log_std = model.levels[0].split.prior_params(kept)
    assert mean.abs().max() > 1e-3  # perturbed prior conv
    split_part = torch.distributions.Normal(mean, log_std.exp()).log_prob(zs[0]).flatten(1).sum(1)
    top_part = torch.distributions.Normal(model.top_mean, model.top_log_std.exp()).log_prob(zs[1])
    torch.testing.assert_close(log_pz, split_part + top_part.flatten(1).sum(1))


@pytest.mark.parametrize("coupling,levels", [("affine", 2), ("additive", 3), ("affine", 1)])
def test_log_prob_terms_sum_to_the_log_density_and_match_each_layer(coupling, levels):
    config = GlowConfig(image_shape=(3, 8, 8), levels=levels, steps=2, width=4, coupling=coupling)
    model = _ready_glow(config, scale=0.1)
    x = _data((3, 3, 8, 8), seed=21) * 0.3
    terms = model.log_prob_terms(x)
    assert all(t.value.shape == (3,) and t.value.dtype == torch.float64 for t in terms)
    # every level has K * 3 layer terms and 3 prior terms, in forward order
    assert [(t.level, t.step, t.kind) for t in terms] == [
        (lvl, step, kind) for lvl in range(levels)
        for step, kind in [(s, k) for s in range(2) for k in LAYER_TERMS] + [(None, k) for k in PRIOR_TERMS]]
    log_pz, logdet = model.log_prob_parts(x)
    total = sum(t.value for t in terms)
    torch.testing.assert_close(total, model.log_prob(x), atol=1e-10, rtol=1e-12)
    torch.testing.assert_close(sum(t.value for t in terms if t.kind in LAYER_TERMS), logdet, atol=1e-10, rtol=1e-12)
    torch.testing.assert_close(sum(t.value for t in terms if t.kind in PRIOR_TERMS), log_pz, atol=1e-10, rtol=1e-12)
    # each layer term is that layer's own log-det: ActNorm H W sum(log a), 1x1 conv H W log|det W|
    for t in terms:
        if t.kind in ("actnorm", "invconv"):
            step = model.levels[t.level].steps[t.step]
            size = (8 // 2 ** (t.level + 1)) ** 2
            if t.kind == "actnorm":
                expected = size * step.actnorm.log_scale.sum()
            else:
                expected = size * torch.linalg.slogdet(step.invconv.weight())[1]
            torch.testing.assert_close(t.value, expected.expand(3), atol=1e-10, rtol=0)
        if t.kind == "coupling" and coupling == "additive":
            assert torch.equal(t.value, torch.zeros(3, dtype=torch.float64))
    # the constant part is -1/2 log(2 pi) per latent dimension of the level
    shapes = model.latent_shapes()
    for t in terms:
        if t.kind == "prior_constant":
            dims = math.prod(shapes[t.level])
            torch.testing.assert_close(t.value, torch.full((3,), -0.5 * math.log(2 * math.pi) * dims,
                                                           dtype=torch.float64))
    # the default forward pass is unchanged by the bookkeeping
    zs, ld = model(x)
    torch.testing.assert_close(ld, logdet, atol=0, rtol=0)


def test_log_prob_terms_prior_parts_against_a_fixed_prior():
    model = _ready_glow(_tiny_config(learn_prior=False))
    x = _data((2, 1, 8, 8), seed=22) * 0.3
    zs, _ = model(x)
    terms = model.log_prob_terms(x)
    for level, z in enumerate(zs):  # N(0, I): no log-std part, the quadratic part is -|z|^2 / 2
        parts = {t.kind: t.value for t in terms if t.level == level and t.step is None}
        torch.testing.assert_close(parts["prior_quadratic"], -0.5 * (z**2).flatten(1).sum(1))
        assert torch.equal(parts["prior_log_std"], torch.zeros(2, dtype=torch.float64))


def test_gaussian_log_prob_closed_form():
    z = torch.tensor([[0.0, 1.0, -2.0]], dtype=torch.float64)
    mean = torch.tensor([[0.0, 0.5, 1.0]], dtype=torch.float64)
    log_std = torch.tensor([[0.0, math.log(2.0), -1.0]], dtype=torch.float64)
    expected = torch.distributions.Normal(mean, log_std.exp()).log_prob(z).sum(1)
    torch.testing.assert_close(gaussian_log_prob(z, mean, log_std), expected)


def test_sample_shapes_temperature_and_generator():
    model = _ready_glow(_tiny_config(image_shape=(3, 8, 8)), dtype=torch.float32)
    a = model.sample(3, temperature=0.7, generator=_gen(5))
    b = model.sample(3, temperature=0.7, generator=_gen(5))
    c = model.sample(3, temperature=0.7, generator=_gen(6))
    assert a.shape == (3, 3, 8, 8) and torch.isfinite(a).all()
    assert torch.equal(a, b) and not torch.equal(a, c)
    # temperature 0 collapses every latent to its prior mean: all samples identical
    cold = model.sample(3, temperature=0.0, generator=_gen(5))
    torch.testing.assert_close(cold, cold[:1].expand_as(cold))
    # and the sample is the inverse of its latents
    zs, _ = model(a)
    x_back, _ = model.inverse(zs)
    torch.testing.assert_close(x_back, a, atol=1e-4, rtol=1e-4)


def test_invconv_weights_order_and_values():
    model = _ready_glow(_tiny_config(lu=True), dtype=torch.float64)
    weights = model.invconv_weights()
    assert [w.shape for w in weights] == [(4, 4)] * 2 + [(8, 8)] * 2
    torch.testing.assert_close(weights[3], model.levels[1].steps[1].invconv.weight())


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


def test_config_json_round_trip_and_defaults():
    config = GlowConfig(image_shape=(3, 32, 32))
    assert (config.levels, config.steps, config.width, config.coupling) == (3, 32, 512, "affine")
    assert config.lu and config.learn_prior and config.n_bits == 8 and config.num_dims == 3072
    restored = GlowConfig.from_dict(json.loads(json.dumps(config.to_dict())))
    assert restored == config and restored.image_shape == (3, 32, 32)
    assert GlowConfig(image_shape=[1, 8, 8], levels=2).image_shape == (1, 8, 8)
    assert hash(restored) == hash(config)


@pytest.mark.parametrize(
    "kwargs,match",
    [
        (dict(image_shape=(1, 28, 28), levels=3), "divisible"),
        (dict(image_shape=(1, 8, 8), levels=1, coupling="affine_exp"), "coupling"),
        (dict(image_shape=(1, 8)), "image_shape"),
        (dict(image_shape=(1, 8, 8), levels=0), "levels"),
        (dict(image_shape=(1, 8, 8), levels=1, width=0), "width"),
        (dict(image_shape=(1, 8, 8), levels=1, n_bits=9), "n_bits"),
    ],
)
def test_config_validation(kwargs, match):
    with pytest.raises(ValueError, match=match):
        GlowConfig(**kwargs)


def test_config_from_dict_rejects_unknown_keys_and_glow_rejects_dicts():
    with pytest.raises(ValueError, match="unknown"):
        GlowConfig.from_dict({"image_shape": [1, 8, 8], "hidden": 3})
    with pytest.raises(TypeError, match="build_glow"):
        Glow({"image_shape": [1, 8, 8]})
