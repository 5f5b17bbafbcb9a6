"""OOD scores built on generative models' log-likelihoods, and small helpers for reporting them.

The follow-ups to Nalisnick et al. (2019, "Do deep generative models know what they don't
know?") that the book compares against raw likelihood:

* :func:`likelihood_ratio` and :func:`perturb_pixels` -- Ren et al. (NeurIPS 2019), a model
  divided by a background model trained on perturbed inputs;
* :func:`typicality_scores`, :func:`estimate_entropy`, :func:`typicality_auroc_by_batch_size` --
  Nalisnick et al. (2019b, "Detecting out-of-distribution inputs to deep generative models using
  typicality"), a test on batches of M inputs;
* :func:`compressed_bits`, :func:`input_complexity_statistic`, :func:`input_complexity_score` --
  Serra et al. (ICLR 2020), likelihood corrected by a lossless compressor's code length;
* :func:`waic`, :func:`ensemble_log_likelihood` -- Choi et al. (2018), ensembles of models;
* :class:`DoSE` and :func:`dose_statistics` -- Morningstar et al. (AISTATS 2021), a density
  fitted on per-example statistics of the model (log-likelihood, its parts, ...) over held-out
  in-distribution data.

Reporting helpers: :func:`seed_spread` and :func:`format_ci` (the bootstrap interval itself is
:func:`ood_core.metrics.bootstrap_ci`); the claims' verdicts live in :mod:`ood_core.claims`.

Conventions
-----------
* Every OOD score is a float64 numpy array ``[N]`` where **higher = more in-distribution**.
  Where a paper's statistic runs the other way (the typicality distance, Serra's ``S``), the
  function says so and returns its negation.
* Inputs may be numpy arrays, torch tensors or sequences; they are never modified.
* Log-likelihoods are *discrete-data* log-likelihoods as returned by
  :func:`ood_core.likelihood.score_flow` (``log_px``, nats) unless a function says otherwise;
  bits/dim is ``-log_px / (D ln 2)`` with ``D = C * H * W``.
* Images are ``uint8`` ``[N, C, H, W]`` with ``C`` = 1 or 3.
"""

from __future__ import annotations

import io
import lzma
import math
import re
from collections.abc import Iterable, Mapping, Sequence
from typing import Any

import numpy as np
import pandas as pd
import torch
from sklearn.exceptions import NotFittedError
from sklearn.model_selection import GridSearchCV, KFold
from sklearn.neighbors import KernelDensity
from sklearn.svm import OneClassSVM

from ood_core import units
from ood_core.metrics import auroc

__all__ = [
    "COMPRESSION_CODECS",
    "DOSE_METHODS",
    "DoSE",
    "FLOW_DOSE_STATISTICS",
    "VAE_DOSE_STATISTICS",
    "compressed_bits",
    "dose_statistics",
    "ensemble_log_likelihood",
    "estimate_entropy",
    "format_ci",
    "input_complexity_score",
    "input_complexity_statistic",
    "likelihood_ratio",
    "PERTURB_UNITS",
    "perturb_pixels",
    "seed_spread",
    "typicality_auroc_by_batch_size",
    "typicality_scores",
    "waic",
]


COMPRESSION_CODECS: tuple[str, ...] = ("png", "webp", "lzma")


# ------------------------------------------------------------------------------------ helpers


def _float_array(values: Any, name: str, ndim: int) -> np.ndarray:
    """A float64 copy-or-view with ``ndim`` dimensions, non-empty and finite."""
    if isinstance(values, torch.Tensor):
        values = values.detach().cpu().double().numpy()
    try:
        arr = np.asarray(values, dtype=np.float64)
    except (TypeError, ValueError) as err:
        raise ValueError(f"{name} must be an array of numbers") from err
    if arr.ndim != ndim:
        raise ValueError(f"{name} must be {ndim}-D; got shape {arr.shape}")
    if arr.size == 0:
        raise ValueError(f"{name} is empty")
    if not np.all(np.isfinite(arr)):
        bad = int(np.sum(~np.isfinite(arr)))
        raise ValueError(f"{name} contains {bad} NaN or inf value(s); fix the inputs first")
    return arr


def _uint8_images(x_uint8: Any, name: str = "x_uint8") -> np.ndarray:
    """A ``uint8`` numpy view ``[N, C, H, W]`` with ``C`` in (1, 3)."""
    if isinstance(x_uint8, torch.Tensor):
        if x_uint8.dtype != torch.uint8:
            raise TypeError(f"{name} must have dtype torch.uint8 (raw pixels 0..255), got {x_uint8.dtype}")
        arr = x_uint8.detach().cpu().numpy()
    elif isinstance(x_uint8, np.ndarray):
        if x_uint8.dtype != np.uint8:
            raise TypeError(f"{name} must have dtype uint8 (raw pixels 0..255), got {x_uint8.dtype}")
        arr = x_uint8
    else:
        raise TypeError(f"{name} must be a uint8 torch.Tensor or numpy array, got {type(x_uint8).__name__}")
    if arr.ndim != 4 or arr.shape[1] not in (1, 3):
        raise ValueError(f"{name} must be shaped [N, C, H, W] with C = 1 or 3; got shape {tuple(arr.shape)}")
    return arr


# -------------------------------------------------------------------- likelihood ratio (Ren)


def likelihood_ratio(log_p_model: Any, log_p_background: Any) -> np.ndarray:
    """Likelihood-ratio score of Ren et al. (NeurIPS 2019): ``LLR(x) = log p_model(x) - log p_background(x)``.

    ``p_model`` is trained on the in-distribution data, ``p_background`` on the same data with
    inputs perturbed by :func:`perturb_pixels`, so that it captures the population-level
    background statistics that dominate ``log p`` and cancel in the ratio. Per example, ``[N]``
    each; the units pass through (both in nats gives nats, both in bits gives bits; do not
    mix, and do not pass bits/dim, which has the opposite sign of a log-likelihood). Higher =
    more in-distribution, as in the paper.
    """
    model = _float_array(log_p_model, "log_p_model", 1)
    background = _float_array(log_p_background, "log_p_background", 1)
    if model.shape != background.shape:
        raise ValueError(
            f"log_p_model {model.shape} and log_p_background {background.shape} must score the same examples"
        )
    return model - background


#: What :func:`perturb_pixels` replaces: ``"subpixel"`` -- each channel value of each pixel on its own
#: (Ren et al.'s ``mutate_x``, the default) -- or ``"pixel"`` -- all channels of a location together.
PERTURB_UNITS: tuple[str, ...] = ("subpixel", "pixel")


def perturb_pixels(
    x_uint8: torch.Tensor | np.ndarray,
    rate: float,
    generator: torch.Generator | None = None,
    *,
    unit: str = "subpixel",
    return_mask: bool = False,
) -> Any:
    """Input perturbation for the background model of Ren et al. (NeurIPS 2019).

    ``unit="subpixel"`` (default, the paper's ``mutate_x``): each *sub-pixel* -- each channel
    value of each pixel -- is selected independently with probability ``rate`` (the paper's
    ``mu``, typically 0.1..0.3) and, when selected, replaced by a uniform draw from
    ``{0, ..., 255}``; a pixel of an RGB image may thus change in one channel only.
    ``unit="pixel"`` (a variant, not the paper's): each spatial location is selected with
    probability ``rate`` and **all its channels** are replaced together (one independent uniform
    value per channel, i.e. a uniformly random colour). For one-channel images both are the same
    distribution. Unselected values are copied.

    ``x_uint8`` is ``[N, C, H, W]`` ``uint8`` (torch or numpy; the result has the input's type
    and device) and is never modified. Random numbers come from ``generator`` (drawn on its
    device, then moved to the input's device), so a seeded generator makes the result
    deterministic; ``None`` uses torch's global generator. With ``return_mask=True`` also
    returns the boolean mask (True = replaced), ``[N, C, H, W]`` for sub-pixels and
    ``[N, 1, H, W]`` for pixels.
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate is a probability in [0, 1] (Ren et al. use 0.1..0.3); got {rate}")
    if unit not in PERTURB_UNITS:
        raise ValueError(f"unit must be one of {PERTURB_UNITS} (Ren et al. replace sub-pixels), got {unit!r}")
    was_numpy = isinstance(x_uint8, np.ndarray)
    x = torch.from_numpy(_uint8_images(x_uint8)) if was_numpy else x_uint8
    if not was_numpy:
        _uint8_images(x[:0])  # dtype and shape checks without copying a GPU tensor to the host
    n, c, h, w = x.shape
    draw_device = generator.device if generator is not None else torch.device("cpu")
    mask = torch.rand((n, c if unit == "subpixel" else 1, h, w), generator=generator, device=draw_device) < rate
    replacement = torch.randint(0, 256, (n, c, h, w), generator=generator, device=draw_device, dtype=torch.uint8)
    mask = mask.to(x.device)
    out = torch.where(mask, replacement.to(x.device), x)  # a new tensor: x is untouched
    if was_numpy:
        out, mask = out.numpy(), mask.numpy()
    return (out, mask) if return_mask else out


# -------------------------------------------------------------------- typicality (Nalisnick)


def estimate_entropy(nll_id_holdout: Any) -> float:
    """Training-set entropy estimate of Nalisnick et al. (2019b): ``H_hat = mean_i NLL(x_i)``.

    ``nll_id_holdout`` are the model's negative log-likelihoods ``-log p(x)`` of held-out
    in-distribution examples (any unit: nats, bits or bits/dim; use the same unit for the test
    NLLs). The mean is the Monte Carlo estimate of ``E_p*[-log p(x)]``, the cross-entropy that a
    typical set of ``p`` concentrates around. The paper uses a held-out split of the training
    data so that the estimate is not biased low by overfitting.
    """
    return float(np.mean(_float_array(nll_id_holdout, "nll_id_holdout", 1)))


def typicality_scores(
    test_nll: Any,
    train_entropy: float,
    batch_size: int,
    generator: np.random.Generator | None = None,
    n_batches: int | None = None,
) -> np.ndarray:
    """Typicality-test score of Nalisnick et al. (2019b), one value per batch.

    For a batch ``{x_1..x_M}`` the test statistic is the distance of the batch's mean NLL from
    the entropy estimate ``H_hat`` (:func:`estimate_entropy`),

        ``eps_hat = | (1/M) sum_m -log p(x_m) - H_hat |``,

    large for atypical (OOD) batches; this function returns ``-eps_hat`` so that higher = more
    in-distribution (0 is the maximum, reached when the batch mean equals ``H_hat``). The paper
    thresholds ``eps_hat`` with a bootstrap quantile; AUROC needs only the score.

    Batches (``M = batch_size``):

    * ``n_batches=None``: disjoint batches of consecutive examples, in the given order or in
      the order of ``generator.permutation(N)`` when a generator is given; the last
      ``N mod M`` examples are dropped, giving ``N // M`` scores. ``M = 1`` without a
      generator is the per-example score ``-|nll_i - H_hat|`` in input order.
    * ``n_batches=K``: ``K`` batches, each of ``M`` distinct examples drawn uniformly without
      replacement (batches drawn independently, so they may overlap); needs ``generator``.

    ``test_nll`` and ``train_entropy`` must be in the same unit. Returns float64 ``[n batches]``.
    """
    nll = _float_array(test_nll, "test_nll", 1)
    if not math.isfinite(train_entropy):
        raise ValueError(f"train_entropy must be finite; got {train_entropy}")
    if int(batch_size) != batch_size or not 1 <= batch_size <= nll.size:
        raise ValueError(f"batch_size must be an integer in 1..{nll.size} (the number of test NLLs); got {batch_size}")
    batch_size = int(batch_size)
    if n_batches is None:
        order = generator.permutation(nll.size) if generator is not None else np.arange(nll.size)
        n_full = nll.size // batch_size
        batch_means = nll[order[: n_full * batch_size]].reshape(n_full, batch_size).mean(axis=1)
    else:
        if generator is None:
            raise ValueError("n_batches draws random batches: pass generator=np.random.default_rng(seed)")
        if int(n_batches) != n_batches or n_batches < 1:
            raise ValueError(f"n_batches must be a positive integer; got {n_batches}")
        batch_means = np.array(
            [nll[generator.choice(nll.size, size=batch_size, replace=False)].mean() for _ in range(int(n_batches))]
        )
    return -np.abs(batch_means - float(train_entropy))


def typicality_auroc_by_batch_size(
    id_nll: Any,
    ood_nll: Any,
    train_entropy: float,
    batch_sizes: Iterable[int],
    seed: int = 0,
    n_batches: int | None = None,
) -> pd.DataFrame:
    """AUROC (percent, ID positive) of :func:`typicality_scores` for each batch size ``M``.

    Reproduces the trend Nalisnick et al. (2019b) report: the test is weak for
    ``M = 1`` and strong for batches of ~10 or more. For each ``M`` the ID and the OOD NLLs are
    split into batches as :func:`typicality_scores` does (shuffled disjoint batches, or
    ``n_batches`` random batches per side), with a generator seeded by ``(seed, M)`` so each
    row is reproducible on its own, and scored with :func:`ood_core.metrics.auroc` (a fraction,
    reported times 100). ``M`` must not exceed the size of either set. Few batches (large
    ``M`` with disjoint batches) make the AUROC coarse: read it together with the counts.

    Returns a DataFrame with columns ``batch_size``, ``AUROC`` (percent), ``n_batches_id`` and
    ``n_batches_ood``, one row per ``M`` in the order given.
    """
    id_arr = _float_array(id_nll, "id_nll", 1)
    ood_arr = _float_array(ood_nll, "ood_nll", 1)
    rows = []
    for m in batch_sizes:
        id_scores = typicality_scores(id_arr, train_entropy, m, np.random.default_rng([seed, m, 0]), n_batches)
        ood_scores = typicality_scores(ood_arr, train_entropy, m, np.random.default_rng([seed, m, 1]), n_batches)
        rows.append(
            {
                "batch_size": int(m),
                "AUROC": 100.0 * auroc(id_scores, ood_scores),
                "n_batches_id": int(id_scores.size),
                "n_batches_ood": int(ood_scores.size),
            }
        )
    if not rows:
        raise ValueError("batch_sizes is empty: pass at least one batch size, e.g. [1, 10, 100]")
    return pd.DataFrame(rows, columns=["batch_size", "AUROC", "n_batches_id", "n_batches_ood"])


# -------------------------------------------------------------------- input complexity (Serra)


def _encode(image_hwc: np.ndarray, codec: str) -> bytes:
    """Lossless encoding of one ``[H, W, C]`` uint8 image (C = 1 or 3) with ``codec``."""
    if codec == "lzma":
        # Preset 6 extreme: its 8 MiB dictionary already exceeds any image here, and presets 7-9
        # only enlarge the dictionary (same output for small inputs, ~50x slower to allocate).
        return lzma.compress(np.ascontiguousarray(image_hwc).tobytes(), preset=6 | lzma.PRESET_EXTREME)
    from PIL import Image, features  # pinned in requirements.txt; only this codec path needs it

    pil = Image.fromarray(image_hwc[..., 0] if image_hwc.shape[-1] == 1 else image_hwc)
    buffer = io.BytesIO()
    if codec == "png":
        pil.save(buffer, format="PNG", optimize=False, compress_level=9)
    elif codec == "webp":
        if not features.check("webp"):
            raise RuntimeError('this Pillow build has no WebP support; use codec="png" or codec="lzma"')
        pil.save(buffer, format="WEBP", lossless=True, quality=100, method=6)
    else:  # pragma: no cover - guarded by compressed_bits
        raise ValueError(codec)
    return buffer.getvalue()


def compressed_bits(x_uint8: torch.Tensor | np.ndarray, codec: str = "png") -> np.ndarray:
    """Per-image length ``L(x)`` in bits of a lossless compression (Serra et al., ICLR 2020).

    ``L(x) = 8 * len(encode(x))`` for each image of a ``uint8`` ``[N, C, H, W]`` batch (C = 1
    or 3; torch or numpy). Codecs, all lossless:

    * ``"png"`` -- Pillow PNG, ``compress_level=9`` (maximum), ``optimize=False``; the paper's
      main compressor is PNG at maximum compression (via OpenCV);
    * ``"webp"`` -- Pillow WebP in lossless mode (``lossless=True, quality=100, method=6``,
      the slowest/strongest effort); a modern predictive lossless coder, closer in spirit to
      the paper's best compressor (FLIF) than PNG, and available in this environment's Pillow;
      grayscale is stored by WebP as RGB with equal channels (still lossless for ``L``);
    * ``"lzma"`` -- stdlib ``lzma`` (xz container, preset 6 extreme, whose 8 MiB dictionary
      covers any image this size; presets 7-9 give identical output here, much slower) on the
      raw bytes in ``H, W, C`` (channel-interleaved) order; no image model, a dependency-free
      fallback.

    Cost on one CPU core for a 32x32x3 image: PNG ~0.5 ms, lossless WebP at ``method=6``
    ~35 ms (its exhaustive search), lzma ~1 ms.

    The lengths include each format's header (a near-constant per codec and image size), as a
    file size does; this shifts ``S`` by about a constant for images of one shape and does not
    change AUROC between sets of equal shape. Returns int64 ``[N]``.
    """
    if codec not in COMPRESSION_CODECS:
        raise ValueError(f"unknown codec {codec!r}; choose one of {list(COMPRESSION_CODECS)}")
    images = _uint8_images(x_uint8)
    channels_last = np.ascontiguousarray(images.transpose(0, 2, 3, 1))
    return np.array([8 * len(_encode(image, codec)) for image in channels_last], dtype=np.int64)


def input_complexity_statistic(
    log_px_nats: Any, x_uint8: torch.Tensor | np.ndarray, codec: str = "png"
) -> np.ndarray:
    """Serra et al. (ICLR 2020), input complexity per dimension: ``S(x) / D = (-log2 p(x) - L(x)) / D`` in bits/dim.

    ``-log2 p(x) = -log_px_nats / ln 2`` is the model's code length for the discrete image (the
    ``log_px`` of :func:`ood_core.likelihood.score_flow`), ``L(x)`` is :func:`compressed_bits`
    with ``codec`` and ``D = C * H * W``. Serra's sign: **large S = OOD** (the model needs many
    more bits than a generic compressor). For the score with the package's sign use
    :func:`input_complexity_score`. Returns float64 ``[N]``.
    """
    log_px = _float_array(log_px_nats, "log_px_nats", 1)
    images = _uint8_images(x_uint8)
    if images.shape[0] != log_px.size:
        raise ValueError(f"log_px_nats has {log_px.size} entries but x_uint8 has {images.shape[0]} images")
    num_dims = int(np.prod(images.shape[1:]))
    bits = compressed_bits(images, codec).astype(np.float64)
    return (-log_px / units.LN2 - bits) / num_dims


def input_complexity_score(
    log_px_nats: Any, x_uint8: torch.Tensor | np.ndarray, codec: str = "png"
) -> np.ndarray:
    """Input-complexity OOD score: ``-S(x) / D = (log2 p(x) + L(x)) / D`` bits/dim, higher = more ID.

    The negation of :func:`input_complexity_statistic` (Serra et al., ICLR 2020, whose
    ``S`` is large for OOD inputs). For equal likelihoods, a very compressible (simple) image
    scores lower than a complex one: its high likelihood is explained by its simplicity.
    """
    return -input_complexity_statistic(log_px_nats, x_uint8, codec)


# -------------------------------------------------------------------------- ensembles (Choi)


def waic(log_p_members: Any, ddof: int = 0) -> np.ndarray:
    """WAIC-style ensemble score of Choi et al. (2018): ``E_m[log p_m(x)] - Var_m[log p_m(x)]``.

    ``log_p_members`` is ``[M, N]``: the log-likelihood of ``N`` examples under each of ``M``
    independently trained models. Mean and variance are over members; the variance uses
    ``ddof`` (default 0: the ensemble's own spread, ``1 / M``). Higher = more in-distribution
    (high likelihood on which the members agree). ``M = 1`` gives ``log p`` itself. Units pass
    through (the variance has squared units, so the result depends on them; the paper uses nats).
    Returns float64 ``[N]``.
    """
    members = _float_array(log_p_members, "log_p_members", 2)
    if not 0 <= ddof < members.shape[0]:
        raise ValueError(f"ddof must be in 0..M-1 = 0..{members.shape[0] - 1}; got {ddof}")
    return members.mean(axis=0) - members.var(axis=0, ddof=ddof)


def ensemble_log_likelihood(log_p_members: Any) -> np.ndarray:
    """Log-likelihood of the uniform mixture of ``M`` models: ``log (1/M) sum_m p_m(x)``.

    ``log_p_members`` is ``[M, N]``; computed as a max-shifted log-mean-exp over members, so
    identical members give back the member. Units: nats (the exponential needs them). Returns
    float64 ``[N]``.
    """
    members = _float_array(log_p_members, "log_p_members", 2)
    peak = members.max(axis=0)
    return peak + np.log(np.mean(np.exp(members - peak), axis=0))


# ----------------------------------------------------------------------- DoSE (Morningstar)

DOSE_METHODS: tuple[str, ...] = ("kde", "joint_kde", "ocsvm")
_KDE_BANDWIDTH_RULES: tuple[str, ...] = ("scott", "silverman", "cv")
# Cross-validated bandwidths are searched on this grid of multiples of Scott's bandwidth.
_CV_BANDWIDTH_FACTORS = np.geomspace(0.1, 10.0, 21)
_CV_FOLDS = 5

FLOW_DOSE_STATISTICS: tuple[str, ...] = ("log_px", "log_pz", "logdet")
"""A flow's DoSE statistics from :func:`ood_core.likelihood.score_flow`; with ``per_level=True``
``log_pz`` is replaced by ``log_pz_level0 .. log_pz_level{L-1}`` and ``z_sqnorm`` is added."""
VAE_DOSE_STATISTICS: tuple[str, ...] = ("log_px", "log_px_z", "kl")
"""A VAE's DoSE statistics from ``generative_study.score_model``: the IWAE log-likelihood
``log_px``, the reconstruction term ``log_px_z`` (minus the distortion) and the ``kl`` (rate)."""

_LEVEL_KEY = re.compile(r"^log_pz_level(\d+)$")


def dose_statistics(scores: Mapping[str, Any], keys: Sequence[str] | None = None) -> dict[str, np.ndarray]:
    """Per-example statistic vectors for :class:`DoSE` from a per-example score dict.

    ``scores`` maps names to ``[N]`` arrays, e.g. the output of
    :func:`ood_core.likelihood.score_flow` (``log_px``, ``log_pz``, ``logdet``, ... and with
    ``per_level=True`` also ``log_pz_level{i}`` and ``z_sqnorm``) or of the generative study's
    ``score_model`` for a VAE (``log_px`` = IWAE, ``elbo``, ``log_px_z``, ``kl``) or a PixelCNN
    (``log_px``). ``keys`` picks the statistics explicitly, in that order. ``None`` picks the
    model's summary statistics the way Morningstar et al. (2021) do, by what ``scores`` holds:

    * a VAE (``kl`` present): :data:`VAE_DOSE_STATISTICS` -- IWAE ``log p(x)``, reconstruction
      ``log p(x|z)`` and ``KL(q(z|x) || p(z))`` (the ELBO is their difference, so it is left out);
    * a flow (``logdet`` present): ``log_px``, then ``log_pz_level0 .. log_pz_level{L-1}`` when
      present (else the total ``log_pz``), ``logdet``, and ``z_sqnorm`` when present;
    * otherwise ``log_px`` alone (an autoregressive model: the density of its log-likelihood).

    Bits/dim entries are affine in the nats entries and never picked automatically. Returns a
    new dict of float64 ``[N]`` arrays (copies; ``scores`` is not modified); all must have the
    same length and be finite.
    """
    if not isinstance(scores, Mapping):
        raise TypeError(f"scores must be a dict of per-example arrays, got {type(scores).__name__}")
    if keys is None:
        if "kl" in scores:
            keys = VAE_DOSE_STATISTICS
        elif "logdet" in scores:
            levels = sorted((int(m.group(1)), k) for k in scores if (m := _LEVEL_KEY.match(k)))
            if [i for i, _ in levels] != list(range(len(levels))):
                raise ValueError(f"per-level keys {[k for _, k in levels]} are not log_pz_level0..L-1")
            middle = [k for _, k in levels] if levels else ["log_pz"]
            keys = ["log_px", *middle, "logdet"] + (["z_sqnorm"] if "z_sqnorm" in scores else [])
        else:
            keys = ["log_px"]
    keys = list(keys)
    if not keys:
        raise ValueError("keys is empty: name at least one statistic")
    if len(set(keys)) != len(keys):
        raise ValueError(f"keys {keys} name a statistic twice")
    missing = [k for k in keys if k not in scores]
    if missing:
        raise KeyError(f"statistics {missing} are not in scores; available: {sorted(scores)}")
    out = {k: _float_array(scores[k], f"scores[{k!r}]", 1).copy() for k in keys}
    lengths = {k: v.size for k, v in out.items()}
    if len(set(lengths.values())) != 1:
        raise ValueError(f"statistics have different lengths {lengths}; they must describe the same examples")
    return out


def _bandwidth_rule(rule: str, n: int, d: int) -> float:
    """Normal-reference bandwidth for unit-variance data: Scott ``n^(-1/(d+4))``, Silverman
    ``(n (d+2) / 4)^(-1/(d+4))`` (scikit-learn's definitions)."""
    if rule == "scott":
        return float(n ** (-1.0 / (d + 4)))
    return float((n * (d + 2) / 4.0) ** (-1.0 / (d + 4)))


class DoSE:
    """Density of States Estimation (Morningstar et al., AISTATS 2021).

    Instead of thresholding the model's likelihood, DoSE asks how *typical* a test example's
    model statistics are: a nonparametric density is fitted on the statistic vectors
    ``T(x) = (T_1(x), .., T_S(x))`` of held-out in-distribution training examples (statistics
    the generative model already produces, see :func:`dose_statistics`), and the score of a
    test example is that density at ``T(x)``. An OOD set with *higher* likelihood than the ID
    data (the inversion of Nalisnick et al. 2019) is then flagged, because its statistics fall
    outside the ID ones on either side.

    Each statistic is standardised with the hold-out mean and (population) standard deviation,
    ``t_s = (T_s - mean_s) / std_s``, so that statistics in nats of very different scale
    (``log p(x)`` ~ -10^4, ``KL`` ~ 10^2) weigh alike. Then, with ``t`` the standardised
    vector and ``t^(j)``, ``j = 1..n`` the standardised hold-out vectors:

    * ``method="kde"`` (DoSE_KDE, the paper's definition and the default): one 1-D Gaussian
      kernel density estimate per statistic, and the score is the **sum of the per-statistic
      log-densities**, ``score = sum_s log (1/n) sum_j N(t_s; t_s^(j), h_s^2)`` (the statistics
      treated as independent, as Morningstar et al. do);
    * ``method="joint_kde"`` (a variant, not the paper's): ``score = log (1/n) sum_j N(t; t^(j), h^2 I)``,
      one Gaussian KDE over the statistic vectors jointly, which also sees their correlations.

      Both are :class:`sklearn.neighbors.KernelDensity` (``score_samples``, exact:
      ``atol = rtol = 0``). Bandwidth ``h`` (per statistic for ``"kde"``):

      - ``"scott"`` (default): ``h = n^(-1/(S+4))``, Scott's normal-reference rule for
        unit-variance data (``S`` = the dimension of the density: ``1`` for each per-statistic
        KDE, the number of statistics for the joint one). Why: after standardisation the statistics are unit-variance and, being
        sums over many pixels or latent dimensions, close to Gaussian, which is the case the
        rule is derived for; it is deterministic and costs nothing. Silverman's rule differs
        from it by the factor ``(4/(S+2))^(1/(S+4))``, between 0.92 and 1.06 for ``S <= 20``;
        ``"silverman"`` gives that rule.
      - ``"cv"``: the bandwidth on the grid ``h_scott * geomspace(0.1, 10, 21)`` that
        maximises the held-out log-likelihood of 5-fold cross-validation on the hold-out
        statistics (``GridSearchCV`` with ``KFold(5, shuffle=True, random_state=0)``), for
        statistics far from Gaussian (several modes, heavy tails).
      - a positive float: that bandwidth, in standardised units.

    * ``method="ocsvm"`` (DoSE_SVM): ``score = decision_function(t)`` of
      :class:`sklearn.svm.OneClassSVM` with an RBF kernel ``exp(-gamma ||t - t'||^2)``, fitted
      on the standardised hold-out statistics: positive inside the learned support, negative
      outside. ``nu = 0.1`` (default) bounds the fraction of hold-out points left outside the
      boundary from above and the fraction of support vectors from below; ``gamma = "scale"``
      is scikit-learn's ``1 / (S * var(t))`` = ``1 / S`` on standardised statistics. Fitting
      is quadratic to cubic in ``n``: a few thousand hold-out examples are enough.

    Higher score = more in-distribution, in both methods. The KDE score is a log-density of the
    *standardised* statistics (it differs from the density of the raw statistics by the
    constant ``sum_s log std_s``, irrelevant for ranking).

    Statistics are passed as a dict ``{name: [N] array}`` (kept in order, names recorded) or as
    an ``[N, S]`` array (columns by position). At ``score`` time a dict must have exactly the
    names seen by ``fit`` (they are matched by name, in any order) and an array the same number
    of columns; anything else raises ``ValueError``. Fitted state: ``statistic_names_`` (a
    tuple, or ``None`` for an array), ``n_statistics_``, ``mean_``, ``scale_``,
    ``bandwidth_`` (a per-statistic array for ``"kde"``, a float for ``"joint_kde"``) and
    ``estimator_`` (the fitted scikit-learn object; a list of them, one per statistic, for ``"kde"``).
    Scoring before ``fit`` raises :class:`sklearn.exceptions.NotFittedError`.

    The paper's abstract measures typicality "given the training data"; we fit on a held-out
    split of the ID training data (as :func:`estimate_entropy` does for the typicality test),
    which keeps an overfitted model's unusually high training likelihoods out of the reference
    density. The score as a sum of per-statistic log-densities is the paper's; the bandwidth
    rule, ``nu`` and ``gamma`` are our choices, stated above.
    """

    def __init__(
        self,
        method: str = "kde",
        *,
        bandwidth: str | float = "scott",
        nu: float = 0.1,
        gamma: str | float = "scale",
    ) -> None:
        self.method = method
        self.bandwidth = bandwidth
        self.nu = nu
        self.gamma = gamma

    def __repr__(self) -> str:
        if self.method == "ocsvm":
            return f"DoSE(method='ocsvm', nu={self.nu!r}, gamma={self.gamma!r})"
        return f"DoSE(method={self.method!r}, bandwidth={self.bandwidth!r})"

    # -- helpers ------------------------------------------------------------------------------

    def _check_params(self) -> None:
        if self.method not in DOSE_METHODS:
            raise ValueError(f"method must be one of {DOSE_METHODS}, got {self.method!r}")
        if self.method in ("kde", "joint_kde"):
            bandwidth = self.bandwidth
            if isinstance(bandwidth, str):
                if bandwidth not in _KDE_BANDWIDTH_RULES:
                    raise ValueError(
                        f"bandwidth must be one of {_KDE_BANDWIDTH_RULES} or a positive float, got {bandwidth!r}"
                    )
            elif isinstance(bandwidth, bool) or not (
                isinstance(bandwidth, (int, float)) and math.isfinite(bandwidth) and bandwidth > 0
            ):
                raise ValueError(
                    f"bandwidth must be one of {_KDE_BANDWIDTH_RULES} or a positive float, got {bandwidth!r}"
                )
        else:
            if not (isinstance(self.nu, (int, float)) and 0.0 < self.nu <= 1.0):
                raise ValueError(f"nu must be in (0, 1] (one-class SVM), got {self.nu!r}")
            if not (self.gamma in ("scale", "auto") or (isinstance(self.gamma, (int, float)) and self.gamma > 0)):
                raise ValueError(f"gamma must be 'scale', 'auto' or a positive float, got {self.gamma!r}")

    @staticmethod
    def _matrix(stats: Any) -> tuple[tuple[str, ...] | None, np.ndarray]:
        """``(names or None, float64 [N, S] array)`` from a dict of ``[N]`` arrays or an array."""
        if isinstance(stats, Mapping):
            if not stats:
                raise ValueError("stats is an empty dict: pass at least one statistic")
            names = tuple(stats)
            if not all(isinstance(name, str) for name in names):
                raise TypeError(f"statistic names must be strings, got {names}")
            columns = [_float_array(stats[name], f"stats[{name!r}]", 1) for name in names]
            lengths = {name: c.size for name, c in zip(names, columns)}
            if len(set(lengths.values())) != 1:
                raise ValueError(f"statistics have different lengths {lengths}; they must describe the same examples")
            return names, np.stack(columns, axis=1)
        if np.ndim(stats) == 1:
            raise ValueError("stats is 1-D: pass a dict {name: [N] array} or an [N, S] array (x.reshape(-1, 1))")
        return None, _float_array(stats, "stats", 2)

    def _aligned(self, stats: Any) -> np.ndarray:
        """The ``[N, S]`` matrix of ``stats`` in the column order seen by ``fit``."""
        names, matrix = self._matrix(stats)
        if self.statistic_names_ is None:
            if names is not None:
                raise ValueError(
                    f"DoSE was fitted on an unnamed [N, {self.n_statistics_}] array; pass an array with "
                    "the same columns in the same order, or refit with a dict of named statistics"
                )
            if matrix.shape[1] != self.n_statistics_:
                raise ValueError(f"DoSE was fitted on {self.n_statistics_} statistics; got {matrix.shape[1]} columns")
            return matrix
        if names is None:
            raise ValueError(
                f"DoSE was fitted on named statistics {list(self.statistic_names_)}; pass a dict with "
                "those names (an unnamed array could hold them in another order)"
            )
        if set(names) != set(self.statistic_names_):
            missing = [n for n in self.statistic_names_ if n not in names]
            extra = [n for n in names if n not in self.statistic_names_]
            raise ValueError(
                f"statistics do not match those DoSE was fitted on ({list(self.statistic_names_)}): "
                f"missing {missing}, unexpected {extra}"
            )
        position = {name: i for i, name in enumerate(names)}
        return matrix[:, [position[name] for name in self.statistic_names_]]

    def _require_fitted(self) -> None:
        if not hasattr(self, "estimator_"):
            raise NotFittedError(
                "This DoSE instance is not fitted yet: call DoSE(...).fit(stats_holdout) on the "
                "statistics of held-out in-distribution examples before scoring."
            )

    @staticmethod
    def _fit_kde(z: np.ndarray, bandwidth: str | float) -> KernelDensity:
        n, d = z.shape
        if isinstance(bandwidth, str) and bandwidth != "cv":
            h = _bandwidth_rule(bandwidth, n, d)
        elif bandwidth == "cv":
            if n < 2 * _CV_FOLDS:
                raise ValueError(f"bandwidth='cv' needs at least {2 * _CV_FOLDS} hold-out examples, got {n}")
            grid = _bandwidth_rule("scott", n, d) * _CV_BANDWIDTH_FACTORS
            search = GridSearchCV(
                KernelDensity(kernel="gaussian"),
                {"bandwidth": grid},
                cv=KFold(_CV_FOLDS, shuffle=True, random_state=0),
            )
            h = float(search.fit(z).best_params_["bandwidth"])
        else:
            h = float(bandwidth)
        return KernelDensity(kernel="gaussian", bandwidth=h).fit(z)

    # -- estimator API ------------------------------------------------------------------------

    def fit(self, stats_holdout: Mapping[str, Any] | np.ndarray | torch.Tensor) -> DoSE:
        """Standardise and fit the density on held-out ID statistics; returns ``self``.

        ``stats_holdout``: a dict ``{name: [N] array}`` (e.g. :func:`dose_statistics`) or an
        ``[N, S]`` array, ``N >= 2``; never modified. A statistic that is constant on the
        hold-out set cannot be standardised and raises ``ValueError``.
        """
        self._check_params()
        names, matrix = self._matrix(stats_holdout)
        n, d = matrix.shape
        if n < 2:
            raise ValueError(f"DoSE needs at least 2 hold-out examples, got {n}")
        mean = matrix.mean(axis=0)
        scale = matrix.std(axis=0)
        constant = np.flatnonzero(~(scale > 0))
        if constant.size:
            label = [names[i] for i in constant] if names is not None else constant.tolist()
            raise ValueError(
                f"statistic(s) {label} are constant on the hold-out set: drop them, they carry no information"
            )
        z = (matrix - mean) / scale
        if self.method in ("kde", "joint_kde"):
            if self.method == "kde":
                estimator: Any = [self._fit_kde(z[:, [s]], self.bandwidth) for s in range(d)]
                bandwidth: Any = np.array([kde.bandwidth_ for kde in estimator])
            else:
                estimator = self._fit_kde(z, self.bandwidth)
                bandwidth = float(estimator.bandwidth_)
            self.bandwidth_ = bandwidth
        else:
            estimator = OneClassSVM(kernel="rbf", nu=self.nu, gamma=self.gamma).fit(z)
        self.statistic_names_ = names
        self.n_statistics_ = d
        self.mean_ = mean
        self.scale_ = scale
        self.estimator_ = estimator
        return self

    def standardize(self, stats: Mapping[str, Any] | np.ndarray | torch.Tensor) -> np.ndarray:
        """``(T - mean_) / scale_`` as a float64 ``[N, S]`` array in the fitted column order."""
        self._require_fitted()
        return (self._aligned(stats) - self.mean_) / self.scale_

    def score(self, stats: Mapping[str, Any] | np.ndarray | torch.Tensor) -> np.ndarray:
        """DoSE score, float64 ``[N]``, higher = more in-distribution (see the class docstring)."""
        z = self.standardize(stats)
        if self.method == "ocsvm":
            return np.asarray(self.estimator_.decision_function(z), dtype=np.float64)
        if self.method == "kde":  # the paper's: the sum of the per-statistic log-densities
            return np.sum([kde.score_samples(z[:, [s]]) for s, kde in enumerate(self.estimator_)], axis=0)
        return np.asarray(self.estimator_.score_samples(z), dtype=np.float64)


# ---------------------------------------------------------------------------------- reporting


def seed_spread(values: Any) -> tuple[float, float, int]:
    """``(mean, std, n)`` of one metric over training seeds; ``std`` is the sample std (``ddof=1``).

    For the "mean ± std over n seeds" cells of a results table (OpenOOD reports 3 seeds this
    way). One seed has no spread: ``std`` is NaN for ``n = 1``.
    """
    arr = _float_array(values, "values", 1)
    std = float(arr.std(ddof=1)) if arr.size > 1 else float("nan")
    return float(arr.mean()), std, int(arr.size)


def format_ci(point: float, low: float, high: float, digits: int = 1) -> str:
    """``"91.2 [89.8, 92.5]"``: a point estimate and its interval, each to ``digits`` decimals.

    Pair with :func:`ood_core.metrics.bootstrap_ci`. Raises if ``low > high``.
    """
    if not low <= high:
        raise ValueError(f"interval bounds out of order: low={low} > high={high}")
    return f"{point:.{digits}f} [{low:.{digits}f}, {high:.{digits}f}]"
