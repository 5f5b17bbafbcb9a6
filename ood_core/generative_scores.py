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
* :func:`waic`, :func:`ensemble_log_likelihood` -- Choi et al. (2018), ensembles of models.

Reporting helpers: :func:`seed_spread` and :func:`format_ci` (the bootstrap interval itself is
:func:`ood_core.metrics.bootstrap_ci`), and :func:`verdict` for the claims ledger.

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
from collections.abc import Iterable
from typing import Any

import numpy as np
import pandas as pd
import torch

from ood_core.metrics import auroc

__all__ = [
    "COMPRESSION_CODECS",
    "VERDICTS",
    "compressed_bits",
    "ensemble_log_likelihood",
    "estimate_entropy",
    "format_ci",
    "input_complexity_score",
    "input_complexity_statistic",
    "likelihood_ratio",
    "perturb_pixels",
    "seed_spread",
    "typicality_auroc_by_batch_size",
    "typicality_scores",
    "verdict",
    "waic",
]

_LN2 = math.log(2.0)

COMPRESSION_CODECS: tuple[str, ...] = ("png", "webp", "lzma")
VERDICTS: tuple[str, ...] = ("reproduced", "partly", "not")


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


def perturb_pixels(
    x_uint8: torch.Tensor | np.ndarray,
    rate: float,
    generator: torch.Generator | None = None,
    *,
    return_mask: bool = False,
) -> Any:
    """Input perturbation for the background model of Ren et al. (NeurIPS 2019).

    Each spatial location of each image is selected independently with probability ``rate``
    (the paper's ``mu``, typically 0.1..0.3) and, when selected, **all its channels** are
    replaced together by a fresh uniform draw from ``{0, ..., 255}`` (one independent value
    per channel, i.e. a uniformly random colour for RGB). Unselected locations are copied.

    ``x_uint8`` is ``[N, C, H, W]`` ``uint8`` (torch or numpy; the result has the input's type
    and device) and is never modified. Random numbers come from ``generator`` (drawn on its
    device, then moved to the input's device), so a seeded generator makes the result
    deterministic; ``None`` uses torch's global generator. With ``return_mask=True`` also
    returns the boolean location mask ``[N, 1, H, W]`` (True = replaced).
    """
    if not 0.0 <= rate <= 1.0:
        raise ValueError(f"rate is a probability in [0, 1] (Ren et al. use 0.1..0.3); got {rate}")
    was_numpy = isinstance(x_uint8, np.ndarray)
    x = torch.from_numpy(_uint8_images(x_uint8)) if was_numpy else x_uint8
    if not was_numpy:
        _uint8_images(x[:0])  # dtype and shape checks without copying a GPU tensor to the host
    n, c, h, w = x.shape
    draw_device = generator.device if generator is not None else torch.device("cpu")
    mask = torch.rand((n, 1, h, w), generator=generator, device=draw_device) < rate
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
    return (-log_px / _LN2 - bits) / num_dims


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


def verdict(condition_full: bool, condition_partial: bool) -> str:
    """The claims ledger's verdict from two explicit, precomputed conditions.

    * ``condition_full`` -> ``"reproduced"`` (it takes precedence, whatever ``condition_partial``);
    * else ``condition_partial`` -> ``"partly"``;
    * else ``"not"``.

    The rule for each claim lives where the claim is stated, e.g.
    ``verdict(auroc >= 95, auroc >= 85)``, so the ledger shows both the number and the rule.
    Only booleans are accepted (Python or numpy): passing a measured number by mistake raises
    ``TypeError`` rather than being read as truthy.
    """
    for name, value in (("condition_full", condition_full), ("condition_partial", condition_partial)):
        if not isinstance(value, (bool, np.bool_)):
            raise TypeError(f"{name} must be a bool (a comparison such as auroc >= 95), got {type(value).__name__}")
    if condition_full:
        return VERDICTS[0]
    if condition_partial:
        return VERDICTS[1]
    return VERDICTS[2]
