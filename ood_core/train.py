"""One resumable trainer for every model in the book: Glow flows and image classifiers.

The trainer knows nothing about the model: the caller passes ``loss_fn(model, batch) -> scalar``
(the mean negative log-likelihood in nats for a flow, Kingma & Dhariwal 2018 eq. 2; the mean
cross-entropy for a classifier) and the trainer owns the rest of the loop.

What it guarantees
------------------
* **Determinism.** Every source of randomness is a pure function of ``config.seed``:
  the example order of epoch ``e`` is ``randperm(seed, e)``; ``batch_transform`` gets a
  ``torch.Generator`` seeded from ``(seed, step, rank)``; the global torch RNG (dropout) is
  seeded at the start of a fresh run and saved in every checkpoint.
* **Bit-identical resume.** ``workdir/checkpoint.pt`` holds the model, optimizer, step, position
  in the epoch, RNG states, the running training-loss window and the evaluation history. A run
  interrupted after ``N`` steps and resumed ends with exactly the same parameters (on CPU) as an
  uninterrupted run; ``tests/test_train.py`` checks it with ``torch.equal``.
* **Safe checkpoints.** Written atomically (temp file in the same directory, ``fsync``,
  ``os.replace``), only from finite parameters, loadable with ``torch.load(weights_only=True)``
  (plain dicts, lists, numbers, strings and tensors; RNG states are ``uint8`` tensors).
* **Same code for 1 and N processes.** Under ``torchrun`` call :func:`setup_distributed` and
  pass its ``device``; :func:`train` notices ``torch.distributed`` and wraps the model in
  ``DistributedDataParallel``. With a mean-reduced loss, N processes follow the single-process
  trajectory up to floating-point summation order (tested on CPU with two gloo processes),
  because :class:`ShardedEpochSampler` gives step ``k`` the same global batch for any world size.

Design notes
------------
* ``loss_fn`` always receives the plain, unwrapped model, so it may call any method (a flow's
  ``forward`` and its prior, a classifier's ``features``/``head``). Under DDP the trainer wraps
  a tiny module ``(model, loss_fn)`` instead of the model, so DDP's forward — which is what
  arms its gradient all-reduce — runs exactly once per step whatever ``loss_fn`` calls.
* Evaluators run on rank 0 only (on the unwrapped model, in eval mode, under ``no_grad``, inside
  a forked RNG so that they never perturb training randomness); rank 0 then broadcasts the
  finished history record, so every rank returns the same history. If an evaluator or a
  checkpoint write fails on rank 0, the failure is broadcast too and every other rank raises
  :class:`PeerRankError` instead of waiting forever at a collective.
* The learning-rate schedule is the pure function :func:`lr_at_step` of the step, applied to
  the optimizer before every update, so the "scheduler state" in a checkpoint is just the step
  (plus a record of the schedule for humans). No ``LambdaLR`` closure needs pickling.
* ``max_steps``, ``checkpoint_every`` and ``eval_every`` only control when a run stops, saves and
  measures; they do not change the trajectory, so they may differ on resume (that is how a
  smoke run is extended, and how the resume test interrupts a run). Every other field must
  match the checkpoint's config or :class:`CheckpointMismatchError` is raised.
"""

from __future__ import annotations

import contextlib
import dataclasses
import hashlib
import logging
import math
import os
import tempfile
import time
from collections.abc import Callable, Iterator, Mapping, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import torch
import torch.distributed as dist
from torch import nn
from torch.utils.data import Dataset, Sampler, TensorDataset
from torch.utils.data._utils.collate import default_collate
from tqdm import tqdm  # plain text bars: no ipywidgets needed in notebooks

__all__ = [
    "CHECKPOINT_NAME",
    "CheckpointMismatchError",
    "DistributedContext",
    "NonFiniteLossError",
    "PeerRankError",
    "ShardedEpochSampler",
    "TrainConfig",
    "TrainConfigError",
    "TrainResult",
    "cleanup_distributed",
    "derive_seed",
    "load_checkpoint_weights",
    "lr_at_step",
    "setup_distributed",
    "train",
]

logger = logging.getLogger(__name__)

CHECKPOINT_NAME = "checkpoint.pt"
_CHECKPOINT_FORMAT = 1
_TEMP_PREFIX = f".{CHECKPOINT_NAME}."
_TEMP_SUFFIX = ".tmp"
_OPTIMIZERS = ("adam", "adamax", "sgd")
_SCHEDULES = ("constant", "cosine", "linear")
# Fields that decide when a run stops, saves or measures but not where it goes.
_RUN_CONTROL_FIELDS = frozenset({"max_steps", "checkpoint_every", "eval_every", "channels_last"})

Batch = tuple[torch.Tensor, ...]
LossFn = Callable[[nn.Module, Batch], torch.Tensor]
BatchTransform = Callable[[Batch, torch.Generator], Batch]
InitFn = Callable[[nn.Module, Batch], None]
Evaluator = Callable[[nn.Module], float]


# --------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------


class TrainConfigError(ValueError):
    """A training configuration (or its combination with the data) cannot be run."""


class CheckpointMismatchError(RuntimeError):
    """``workdir`` holds a checkpoint from a different configuration or data set."""


class NonFiniteLossError(RuntimeError):
    """Training produced a NaN/inf loss, gradient norm or parameter; nothing bad was saved.

    Attributes: ``step`` (1-based index of the update that failed) and ``checkpoint_path``
    (the last good checkpoint, or ``None`` if none had been written yet).
    """

    def __init__(self, message: str, *, step: int, checkpoint_path: Path | None) -> None:
        super().__init__(message)
        self.step = step
        self.checkpoint_path = checkpoint_path


class PeerRankError(RuntimeError):
    """Raised on ranks != 0 when rank 0 failed inside an evaluator or a checkpoint write."""


# --------------------------------------------------------------------------------------------
# Configuration
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class TrainConfig:
    """Hyper-parameters of one training run; saved in every checkpoint.

    ``batch_size`` is the *global* batch: each of ``world_size`` processes sees
    ``batch_size // world_size`` examples per step. ``warmup_steps`` ramps the learning rate
    linearly, then ``schedule`` is ``"constant"``, ``"cosine"`` or ``"linear"`` (both to zero at
    the last step of ``epochs``; warm-up plus linear decay is the one-cycle shape of fast CIFAR
    training). ``checkpoint_every``/``eval_every`` are in steps; 0 means only at the end of
    each epoch (and of the run). ``max_steps`` stops early without changing the schedule, which
    is what smoke profiles use. ``amp_bf16`` enables bf16 autocast on CUDA (ignored on other
    devices); ``amp_bf16_cpu`` enables it on the CPU as well (oneDNN bf16 convolutions, about
    1.7x faster on CPUs with AVX512_BF16 or AMX). ``channels_last`` puts the model in the NHWC
    layout on any device. ``optimizer="sgd"`` means momentum 0.9 with Nesterov;
    ``weight_decay`` is the optimizer's L2 term (coupled, as in ``torch.optim.Adam``).
    """

    epochs: int
    batch_size: int
    lr: float
    optimizer: str = "adamax"
    weight_decay: float = 0.0
    warmup_steps: int = 0
    schedule: str = "constant"
    grad_clip: float | None = None
    seed: int = 0
    checkpoint_every: int = 200
    eval_every: int = 0
    max_steps: int | None = None
    amp_bf16: bool = False
    # Memory layout only (CUDA and oneDNN convolutions run faster in NHWC); results agree to
    # rounding, so the field is not part of artifact keys (ood_core.artifacts.config_dict).
    channels_last: bool = field(default=False, metadata={"key": False})
    # Added after results were committed: in the key only when set (its default keeps old keys).
    amp_bf16_cpu: bool = field(default=False, metadata={"key": "if-set"})

    def __post_init__(self) -> None:
        problems = []
        if not (isinstance(self.epochs, int) and self.epochs >= 1):
            problems.append(f"epochs must be an int >= 1, got {self.epochs!r}")
        if not (isinstance(self.batch_size, int) and self.batch_size >= 1):
            problems.append(f"batch_size must be an int >= 1, got {self.batch_size!r}")
        if not (isinstance(self.lr, (int, float)) and math.isfinite(self.lr) and self.lr > 0):
            problems.append(f"lr must be a finite number > 0, got {self.lr!r}")
        if self.optimizer not in _OPTIMIZERS:
            problems.append(f"optimizer must be one of {_OPTIMIZERS}, got {self.optimizer!r}")
        if not (isinstance(self.weight_decay, (int, float)) and self.weight_decay >= 0):
            problems.append(f"weight_decay must be >= 0, got {self.weight_decay!r}")
        if not (isinstance(self.warmup_steps, int) and self.warmup_steps >= 0):
            problems.append(f"warmup_steps must be an int >= 0, got {self.warmup_steps!r}")
        if self.schedule not in _SCHEDULES:
            problems.append(f"schedule must be one of {_SCHEDULES}, got {self.schedule!r}")
        if self.grad_clip is not None and not (
            isinstance(self.grad_clip, (int, float)) and self.grad_clip > 0
        ):
            problems.append(f"grad_clip must be None or > 0, got {self.grad_clip!r}")
        if not isinstance(self.seed, int):
            problems.append(f"seed must be an int, got {self.seed!r}")
        for name in ("checkpoint_every", "eval_every"):
            value = getattr(self, name)
            if not (isinstance(value, int) and value >= 0):
                problems.append(f"{name} must be an int >= 0 (0 = end of epoch), got {value!r}")
        if self.max_steps is not None and not (
            isinstance(self.max_steps, int) and self.max_steps >= 1
        ):
            problems.append(f"max_steps must be None or an int >= 1, got {self.max_steps!r}")
        if problems:
            raise TrainConfigError("Invalid TrainConfig: " + "; ".join(problems) + ".")

    def to_dict(self) -> dict[str, Any]:
        """Plain JSON- and ``weights_only``-safe dict of all fields."""
        return dataclasses.asdict(self)

    @classmethod
    def from_dict(cls, data: Mapping[str, Any]) -> TrainConfig:
        """Inverse of :meth:`to_dict`; unknown keys are an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = sorted(set(data) - known)
        if unknown:
            raise TrainConfigError(
                f"Unknown TrainConfig field(s) {unknown}; known fields are {sorted(known)}."
            )
        try:
            return cls(**dict(data))
        except TypeError as exc:
            raise TrainConfigError(f"Cannot build TrainConfig from {dict(data)!r}: {exc}") from exc


@dataclass
class TrainResult:
    """What :func:`train` returns.

    ``history``: one record per evaluation point, each ``{"step", "epoch", "train_loss", "lr",
    <evaluator name>..., "time_s"}`` with ``epoch = step / steps_per_epoch`` (a float) and
    ``time_s`` the training wall time accumulated over all resumed calls. ``steps``: optimizer
    updates done in total. ``wall_time_s``: time spent in *this* call. ``resumed_from_step``:
    the step loaded from an existing checkpoint (0 for a fresh run).
    """

    history: list[dict[str, Any]]
    steps: int
    wall_time_s: float
    checkpoint_path: Path | None
    resumed_from_step: int = 0


def lr_at_step(step: int, config: TrainConfig, total_steps: int) -> float:
    """Learning rate of update ``step`` (0-based) out of ``total_steps``.

    Linear warm-up: ``lr * (step + 1) / warmup_steps`` for ``step < warmup_steps`` (so the very
    first update already moves). Afterwards ``lr`` (constant), the cosine decay
    ``lr * (1 + cos(pi * t)) / 2`` (Loshchilov & Hutter 2017, SGDR eq. 5 without restarts, with a
    zero floor) or the linear decay ``lr * (1 - t)`` (with warm-up: the triangular one-cycle
    schedule of Smith & Topin 2017, used by Page's and Jordan's fast CIFAR-10 training), with
    ``t = (step - warmup) / (total_steps - warmup)``.
    """
    if step < 0:
        raise ValueError(f"step must be >= 0, got {step}.")
    if step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    if config.schedule == "constant":
        return config.lr
    decay_steps = max(1, total_steps - config.warmup_steps)
    progress = min(1.0, (step - config.warmup_steps) / decay_steps)
    if config.schedule == "linear":
        return config.lr * (1.0 - progress)
    return config.lr * 0.5 * (1.0 + math.cos(math.pi * progress))


def derive_seed(*parts: object) -> int:
    """A 63-bit seed that is a stable function of ``parts`` (e.g. ``(seed, "order", epoch)``).

    Hashing rather than ``seed + epoch`` keeps streams for different purposes and steps apart.
    """
    digest = hashlib.sha256("/".join(str(p) for p in parts).encode()).digest()
    return int.from_bytes(digest[:8], "little") & ((1 << 63) - 1)


# --------------------------------------------------------------------------------------------
# Data order
# --------------------------------------------------------------------------------------------


class ShardedEpochSampler(Sampler[list[int]]):
    """Batch sampler: one permutation per epoch, each *global* batch split across ranks.

    Epoch ``e`` uses ``perm = randperm(num_examples)`` from a generator seeded with
    ``derive_seed(seed, "order", e)``; global batch ``k`` is ``perm[k*B:(k+1)*B]`` (incomplete
    tail dropped) and rank ``r`` takes positions ``r::world_size`` of it.

    Why not ``DistributedSampler``: it strides the same way, but its permutation comes from its
    own ``seed + epoch`` generator and the single-process run would use a different sampler,
    so 1 and N processes see different batches. Here the permutation does not depend on the
    world size, so step ``k`` consumes the same ``B`` examples for any number of processes
    (the DDP test compares parameters), and resuming in the middle of an epoch is indexing,
    not iterating over the skipped batches.
    """

    def __init__(
        self,
        num_examples: int,
        batch_size: int,
        *,
        seed: int = 0,
        rank: int = 0,
        world_size: int = 1,
    ) -> None:
        if world_size < 1 or not 0 <= rank < world_size:
            raise ValueError(
                f"Need 0 <= rank < world_size, got rank={rank}, world_size={world_size}."
            )
        if batch_size % world_size != 0:
            raise TrainConfigError(
                f"Global batch_size={batch_size} is not divisible by world_size={world_size}; "
                "choose a batch size that is a multiple of the number of processes."
            )
        self.num_examples = num_examples
        self.batch_size = batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.epoch = 0

    @property
    def per_rank_batch_size(self) -> int:
        return self.batch_size // self.world_size

    def __len__(self) -> int:
        """Steps per epoch (full global batches)."""
        return self.num_examples // self.batch_size

    def set_epoch(self, epoch: int) -> None:
        self.epoch = epoch

    def permutation(self, epoch: int) -> torch.Tensor:
        generator = torch.Generator().manual_seed(derive_seed(self.seed, "order", epoch))
        return torch.randperm(self.num_examples, generator=generator)

    def rank_indices(self, permutation: torch.Tensor, batch_index: int) -> torch.Tensor:
        """This rank's share of global batch ``batch_index`` of an epoch's ``permutation``."""
        start = batch_index * self.batch_size
        return permutation[start : start + self.batch_size][self.rank :: self.world_size]

    def __iter__(self) -> Iterator[list[int]]:
        permutation = self.permutation(self.epoch)
        for batch_index in range(len(self)):
            yield self.rank_indices(permutation, batch_index).tolist()


def _fetch_batch(dataset: Dataset, indices: torch.Tensor, device: torch.device) -> Batch:
    if isinstance(dataset, TensorDataset):
        # In-memory tensors: one fancy-index per tensor instead of B __getitem__ calls.
        parts = tuple(t[indices.to(t.device)] for t in dataset.tensors)
    else:
        collated = default_collate([dataset[int(i)] for i in indices])
        parts = tuple(collated) if isinstance(collated, (list, tuple)) else (collated,)
    return tuple(
        p.to(device, non_blocking=True) if isinstance(p, torch.Tensor) else p for p in parts
    )


# --------------------------------------------------------------------------------------------
# Distributed helpers
# --------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class DistributedContext:
    """Where this process sits: ``rank`` of ``world_size``, and the device it should use."""

    rank: int
    world_size: int
    local_rank: int
    device: torch.device

    @property
    def is_main(self) -> bool:
        return self.rank == 0


def setup_distributed() -> DistributedContext:
    """Join the process group described by torchrun's env vars, or run as a single process.

    Reads ``RANK``, ``WORLD_SIZE`` and ``LOCAL_RANK`` (plus ``MASTER_ADDR``/``MASTER_PORT``
    through ``init_method="env://"``). Backend ``nccl`` when CUDA is available, else ``gloo``.
    Without those variables (plain ``python``) or with ``WORLD_SIZE=1`` nothing is initialised
    and the context says rank 0 of 1, so callers need no branch. Idempotent.
    """
    cuda = torch.cuda.is_available()
    if dist.is_available() and dist.is_initialized():
        rank, world_size = dist.get_rank(), dist.get_world_size()
        local_rank = int(os.environ.get("LOCAL_RANK", rank))
    else:
        world_size = int(os.environ.get("WORLD_SIZE", "1"))
        rank = int(os.environ.get("RANK", "0"))
        local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        if world_size > 1:
            if not dist.is_available():
                raise RuntimeError(
                    "WORLD_SIZE > 1 but this PyTorch build has no torch.distributed; "
                    "run a single process or install a build with distributed support."
                )
            if cuda:
                torch.cuda.set_device(local_rank)
            dist.init_process_group(backend="nccl" if cuda else "gloo", init_method="env://")
    device = torch.device("cuda", local_rank) if cuda else torch.device("cpu")
    if cuda and world_size > 1:
        torch.cuda.set_device(device)
    return DistributedContext(
        rank=rank, world_size=world_size, local_rank=local_rank, device=device
    )


def cleanup_distributed() -> None:
    """Destroy the process group if one is initialised (safe to call in single-process runs)."""
    if dist.is_available() and dist.is_initialized():
        dist.destroy_process_group()


def _world() -> tuple[int, int]:
    if dist.is_available() and dist.is_initialized():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def _rank0_then_share(fn: Callable[[], Any], rank: int, world_size: int) -> Any:
    """Run ``fn`` on rank 0 and hand its result (or its failure) to every rank.

    The broadcast doubles as the barrier after rank-0-only work; broadcasting a failure keeps
    the other ranks from hanging at the next collective when rank 0 raises.
    """
    if world_size == 1:
        return fn()
    payload: list[Any] = [None]
    local_error: BaseException | None = None
    if rank == 0:
        try:
            payload = [("ok", fn())]
        except BaseException as exc:  # noqa: BLE001 - re-raised below after telling the peers
            local_error = exc
            payload = [("error", f"{type(exc).__name__}: {exc}")]
    dist.broadcast_object_list(payload, src=0)
    status, value = payload[0]
    if status == "error":
        if local_error is not None:
            raise local_error
        raise PeerRankError(
            f"Rank 0 failed ({value}); rank {rank} stops as well so the job does not hang. "
            "See rank 0's traceback."
        )
    return value


# --------------------------------------------------------------------------------------------
# Checkpoints
# --------------------------------------------------------------------------------------------


def _atomic_save(obj: Any, path: Path) -> None:
    """``torch.save`` to a temp file beside ``path``, fsync, then ``os.replace`` onto it.

    A crash at any point leaves either the old file or the new one, never a torn file, and
    no temp file survives an exception.
    """
    fd, tmp_name = tempfile.mkstemp(prefix=_TEMP_PREFIX, suffix=_TEMP_SUFFIX, dir=path.parent)
    try:
        with os.fdopen(fd, "wb") as handle:
            torch.save(obj, handle)
            handle.flush()
            os.fsync(handle.fileno())
        os.replace(tmp_name, path)
    except BaseException:
        with contextlib.suppress(FileNotFoundError):
            os.unlink(tmp_name)
        raise
    if hasattr(os, "O_DIRECTORY"):  # persist the rename itself (POSIX)
        dir_fd = os.open(path.parent, os.O_RDONLY | os.O_DIRECTORY)
        try:
            os.fsync(dir_fd)
        finally:
            os.close(dir_fd)


def _load_checkpoint(path: Path) -> dict[str, Any]:
    return torch.load(path, map_location="cpu", weights_only=True)


def load_checkpoint_weights(model: nn.Module, path: str | os.PathLike[str]) -> dict[str, Any]:
    """Load the model weights of a trainer checkpoint into ``model`` (``weights_only=True``).

    ``path`` is a checkpoint file or a training ``workdir``. Returns the checkpoint's metadata
    ``{"step", "epoch", "config", "history"}`` so a notebook can plot the training curve.
    """
    path = Path(path)
    if path.is_dir():
        path = path / CHECKPOINT_NAME
    if not path.is_file():
        raise FileNotFoundError(
            f"No checkpoint at {path}; train the model first (ood_core.train.train)."
        )
    checkpoint = _load_checkpoint(path)
    model.load_state_dict(checkpoint["model"])
    return {key: checkpoint[key] for key in ("step", "epoch", "config", "history")}


def _capture_rng(device: torch.device) -> dict[str, torch.Tensor | None]:
    cuda_state = torch.cuda.get_rng_state(device) if device.type == "cuda" else None
    return {"cpu": torch.get_rng_state(), "cuda": cuda_state}


def _restore_rng(state: Mapping[str, torch.Tensor | None], device: torch.device) -> None:
    torch.set_rng_state(state["cpu"])
    if device.type == "cuda" and state.get("cuda") is not None:
        torch.cuda.set_rng_state(state["cuda"], device)


def _config_differences(saved: Mapping[str, Any], current: Mapping[str, Any]) -> list[str]:
    # a field added later is absent from older checkpoints: there it held its default
    defaults = {f.name: f.default for f in dataclasses.fields(TrainConfig) if f.default is not dataclasses.MISSING}
    saved = {**defaults, **saved}
    names = (set(saved) | set(current)) - _RUN_CONTROL_FIELDS
    return [
        f"{name}: checkpoint={saved.get(name)!r}, now={current.get(name)!r}"
        for name in sorted(names)
        if saved.get(name) != current.get(name)
    ]


# --------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------


class _LossModule(nn.Module):
    """``(model, loss_fn)`` as one module, so DDP's forward wraps the whole loss computation."""

    def __init__(self, model: nn.Module, loss_fn: LossFn) -> None:
        super().__init__()
        self.model = model
        object.__setattr__(self, "_loss_fn", loss_fn)  # never register it as a submodule

    def forward(self, *batch: torch.Tensor) -> torch.Tensor:
        return self._loss_fn(self.model, tuple(batch))


def _build_optimizer(params: Sequence[nn.Parameter], config: TrainConfig) -> torch.optim.Optimizer:
    if config.optimizer == "adam":
        return torch.optim.Adam(params, lr=config.lr, weight_decay=config.weight_decay)
    if config.optimizer == "adamax":
        return torch.optim.Adamax(params, lr=config.lr, weight_decay=config.weight_decay)
    return torch.optim.SGD(
        params, lr=config.lr, momentum=0.9, nesterov=True, weight_decay=config.weight_decay
    )


def _resolve_device(model: nn.Module, device: str | torch.device | None) -> torch.device:
    if device is not None:
        return torch.device(device)
    for tensor in model.parameters():
        return tensor.device
    return torch.device("cpu")


@dataclass
class _State:
    """Everything that moves during training and goes into the checkpoint."""

    step: int = 0
    history: list[dict[str, Any]] = field(default_factory=list)
    loss_sum: float = 0.0  # running training-loss window since the last history record
    loss_count: int = 0
    time_s: float = 0.0  # training wall time accumulated over earlier calls
    last_lr: float = 0.0


def train(
    model: nn.Module,
    loss_fn: LossFn,
    train_data: Dataset,
    config: TrainConfig,
    workdir: str | os.PathLike[str],
    *,
    evaluators: Mapping[str, Evaluator] | None = None,
    batch_transform: BatchTransform | None = None,
    init_fn: InitFn | None = None,
    device: str | torch.device | None = None,
    progress: bool = True,
) -> TrainResult:
    """Train ``model`` by minimising ``loss_fn``, resuming from ``workdir/checkpoint.pt`` if any.

    Per step: fetch this rank's share of the global batch (see :class:`ShardedEpochSampler`),
    move it to ``device``, apply ``batch_transform(batch, generator)`` with a generator on
    ``device`` seeded from ``(seed, step, rank)``, set the learning rate from
    :func:`lr_at_step`, compute ``loss_fn(model, batch)`` (under bf16 autocast where enabled),
    stop with :class:`NonFiniteLossError` if the loss (mean over ranks) or, with ``grad_clip``,
    the gradient norm is not finite, then back-propagate, clip and step.

    ``init_fn(model, batch)`` runs once, on a fresh run only, under ``no_grad`` and before DDP
    wrapping, on the *whole* first global batch (transformed with a generator seeded from
    ``(seed, "init")``) so every rank computes the same data-dependent initialisation.

    ``evaluators`` map a name to ``f(model) -> float``; they run every ``eval_every`` steps, at
    the end of each epoch and at the last step of the call, on rank 0 (see the module
    docstring). A checkpoint is written every ``checkpoint_every`` steps, at the end of each
    epoch and at the last step. ``device`` defaults to the device of the model's parameters.
    """
    trainer = _Trainer(model, loss_fn, train_data, config, workdir, evaluators, batch_transform, device)
    trainer.resume_or_start(init_fn)
    trainer.prepare_steps()
    return trainer.run(progress)


class _Trainer:
    """One call of :func:`train`, in the order it runs: ``__init__`` (check the arguments, place the
    model, build the sampler and the optimizer), :meth:`resume_or_start` (the checkpoint or the
    data-dependent initialisation), :meth:`prepare_steps` (DDP wrapping, autocast) and :meth:`run`
    (the loop: :meth:`train_step` per batch, :meth:`record` and :meth:`save` when due)."""

    def __init__(
        self,
        model: nn.Module,
        loss_fn: LossFn,
        train_data: Dataset,
        config: TrainConfig,
        workdir: str | os.PathLike[str],
        evaluators: Mapping[str, Evaluator] | None,
        batch_transform: BatchTransform | None,
        device: str | torch.device | None,
    ) -> None:
        if not isinstance(config, TrainConfig):
            raise TypeError(f"config must be a TrainConfig, got {type(config).__name__}.")
        self.evaluators = dict(evaluators or {})
        reserved = {"step", "epoch", "train_loss", "lr", "time_s"} & set(self.evaluators)
        if reserved:
            raise ValueError(
                f"Evaluator names {sorted(reserved)} clash with history keys; rename them."
            )
        self.call_start = time.perf_counter()
        self.rank, self.world_size = _world()
        workdir = Path(workdir)
        workdir.mkdir(parents=True, exist_ok=True)
        self.checkpoint_path = workdir / CHECKPOINT_NAME
        self.model, self.loss_fn, self.train_data, self.config = model, loss_fn, train_data, config
        self.batch_transform = batch_transform

        self.device = _resolve_device(model, device)
        model.to(self.device)
        if config.channels_last:
            model.to(memory_format=torch.channels_last)
        self.num_examples = len(train_data)
        self.sampler = ShardedEpochSampler(
            self.num_examples, config.batch_size, seed=config.seed, rank=self.rank, world_size=self.world_size
        )
        self.steps_per_epoch = len(self.sampler)
        if self.steps_per_epoch == 0:
            raise TrainConfigError(
                f"The training set has {self.num_examples} examples, fewer than batch_size="
                f"{config.batch_size}; lower the batch size or use more data."
            )
        self.total_steps = config.epochs * self.steps_per_epoch
        self.stop_step = min(self.total_steps, config.max_steps) if config.max_steps else self.total_steps

        self.params = [p for p in model.parameters() if p.requires_grad]
        if not self.params:
            raise ValueError(
                "The model has no trainable parameters (requires_grad=True); nothing to train."
            )
        self.optimizer = _build_optimizer(self.params, config)
        self.state = _State()

        if self.rank == 0:
            for stale in workdir.glob(f"{_TEMP_PREFIX}*{_TEMP_SUFFIX}"):  # left by a killed save
                stale.unlink(missing_ok=True)

    # -- before the first step -----------------------------------------------------------------

    def resume_or_start(self, init_fn: InitFn | None) -> None:
        """Continue from the checkpoint in the workdir if there is one, else seed and initialise."""
        if self.checkpoint_path.is_file():
            self._resume(_load_checkpoint(self.checkpoint_path))
        else:
            self._start(init_fn)
        self.resumed_from = self.state.step

    def _resume(self, checkpoint: dict[str, Any]) -> None:
        config, rank = self.config, self.rank
        differences = _config_differences(checkpoint["config"], config.to_dict())
        if checkpoint.get("num_examples") != self.num_examples:
            differences.append(
                f"num_examples: checkpoint={checkpoint.get('num_examples')}, now={self.num_examples}"
            )
        if differences:
            raise CheckpointMismatchError(
                f"{self.checkpoint_path} was written by a different run ({'; '.join(differences)}). "
                "Use a new workdir for this configuration, or delete the old checkpoint to "
                "start over."
            )
        self.model.load_state_dict(checkpoint["model"])
        self.optimizer.load_state_dict(checkpoint["optimizer"])
        rng_states = checkpoint["rng"]
        if len(rng_states) == self.world_size:
            _restore_rng(rng_states[rank], self.device)
        elif rank == 0:  # another world size: rank 0 keeps its stream, the others are reseeded
            _restore_rng(rng_states[0], self.device)
        else:
            torch.manual_seed(derive_seed(config.seed, "torch", rank, checkpoint["step"]))
        self.state = _State(
            step=checkpoint["step"],
            history=list(checkpoint["history"]),
            loss_sum=checkpoint["loss_window"]["sum"],
            loss_count=checkpoint["loss_window"]["count"],
            time_s=checkpoint["time_s"],
            last_lr=checkpoint["scheduler"]["last_lr"],
        )
        logger.info("Resuming from %s at step %d of %d.", self.checkpoint_path, self.state.step, self.stop_step)

    def _start(self, init_fn: InitFn | None) -> None:
        config = self.config
        torch.manual_seed(derive_seed(config.seed, "torch", self.rank))
        if init_fn is not None:
            global_sampler = ShardedEpochSampler(self.num_examples, config.batch_size, seed=config.seed)
            first_indices = global_sampler.rank_indices(global_sampler.permutation(0), 0)
            first = _fetch_batch(self.train_data, first_indices, self.device)
            if self.batch_transform is not None:
                first = self.batch_transform(first, _generator(self.device, config.seed, "init"))
            self.model.train()
            with torch.no_grad():
                init_fn(self.model, first)

    def prepare_steps(self) -> None:
        """Wrap the loss in DDP when there are several ranks; decide autocast; note the last checkpoint."""
        self.ddp: nn.Module | None = None
        if self.world_size > 1:
            from torch.nn.parallel import DistributedDataParallel

            self.ddp = DistributedDataParallel(
                _LossModule(self.model, self.loss_fn),
                device_ids=[self.device.index] if self.device.type == "cuda" else None,
            )
        config, device_type = self.config, self.device.type
        self.use_autocast = (config.amp_bf16 and device_type == "cuda") or (config.amp_bf16_cpu and device_type == "cpu")
        self.last_saved: Path | None = self.checkpoint_path if self.checkpoint_path.is_file() else None

    # -- the loop ------------------------------------------------------------------------------

    def run(self, progress: bool) -> TrainResult:
        """Step until ``stop_step``, recording and checkpointing when due; the call's result."""
        config, state, steps_per_epoch = self.config, self.state, self.steps_per_epoch
        self.model.train()
        permutation: torch.Tensor | None = None
        permutation_epoch = -1
        step = state.step
        with tqdm(
            total=self.stop_step,
            initial=step,
            desc="train",
            disable=not progress or self.rank != 0,
            dynamic_ncols=True,
        ) as bar:
            while step < self.stop_step:
                epoch, batch_index = divmod(step, steps_per_epoch)
                if epoch != permutation_epoch:
                    permutation, permutation_epoch = self.sampler.permutation(epoch), epoch
                loss_value, lr = self.train_step(step, self.sampler.rank_indices(permutation, batch_index))
                step += 1
                state.step = step
                state.last_lr = lr
                state.loss_sum += loss_value
                state.loss_count += 1
                bar.update(1)
                bar.set_postfix(loss=f"{loss_value:.4g}", lr=f"{lr:.3g}", refresh=False)
                logger.debug("step %d loss %.6g lr %.3g", step, loss_value, lr)

                end_of_epoch = step % steps_per_epoch == 0
                last = step == self.stop_step
                if end_of_epoch or last or (config.eval_every and step % config.eval_every == 0):
                    self.record(step)
                checkpoint_due = config.checkpoint_every and step % config.checkpoint_every == 0
                if end_of_epoch or last or checkpoint_due:
                    self.save(step)

        wall = time.perf_counter() - self.call_start
        return TrainResult(
            history=list(state.history),
            steps=step,
            wall_time_s=wall,
            checkpoint_path=self.last_saved,
            resumed_from_step=self.resumed_from,
        )

    def train_step(self, step: int, indices: torch.Tensor) -> tuple[float, float]:
        """One optimiser step on this rank's share of batch ``step``: ``(mean loss over ranks, lr)``."""
        config, device = self.config, self.device
        batch = _fetch_batch(self.train_data, indices, device)
        if self.batch_transform is not None:
            batch = self.batch_transform(batch, _generator(device, config.seed, "batch", step, self.rank))

        lr = lr_at_step(step, config, self.total_steps)
        for group in self.optimizer.param_groups:
            group["lr"] = lr
        self.optimizer.zero_grad(set_to_none=True)
        with torch.autocast(
            device_type=device.type, dtype=torch.bfloat16, enabled=self.use_autocast
        ):
            loss = self.ddp(*batch) if self.ddp is not None else self.loss_fn(self.model, batch)
        if not isinstance(loss, torch.Tensor) or loss.ndim != 0:
            raise ValueError(
                "loss_fn must return a scalar tensor (reduce per-example losses with .mean()), "
                f"got {type(loss).__name__} with shape {getattr(loss, 'shape', None)}."
            )
        loss_value = _mean_over_ranks(loss.detach(), self.world_size)
        if not math.isfinite(loss_value):
            raise NonFiniteLossError(
                f"Loss is {loss_value} at step {step + 1}; stopped before the update, "
                f"{_last_good(self.last_saved)}. Lower lr, enable grad_clip, or check the "
                "ActNorm/data-dependent initialisation.",
                step=step + 1,
                checkpoint_path=self.last_saved,
            )
        loss.backward()
        if config.grad_clip is not None:
            grad_norm = torch.nn.utils.clip_grad_norm_(self.params, config.grad_clip)
            if not torch.isfinite(grad_norm):
                raise NonFiniteLossError(
                    f"Gradient norm is {grad_norm.item()} at step {step + 1}; stopped before "
                    f"the update, {_last_good(self.last_saved)}. Lower lr or check the model for "
                    "operations with unbounded gradients.",
                    step=step + 1,
                    checkpoint_path=self.last_saved,
                )
        self.optimizer.step()
        return loss_value, lr

    # -- history and checkpoints ---------------------------------------------------------------

    def elapsed(self) -> float:
        """Training wall time of this run so far, earlier calls included."""
        return self.state.time_s + time.perf_counter() - self.call_start

    def record(self, step: int) -> None:
        """Append a history entry (measured on rank 0, shared with the others); reset the loss window."""
        state = self.state
        entry = _rank0_then_share(lambda: self._measure(step), self.rank, self.world_size)
        state.history.append(entry)
        state.loss_sum, state.loss_count = 0.0, 0
        if self.rank == 0:
            logger.info(
                "step %d (epoch %.2f): %s",
                step,
                entry["epoch"],
                ", ".join(f"{k}={v:.5g}" for k, v in entry.items() if k not in ("step", "epoch")),
            )

    def _measure(self, step: int) -> dict[str, Any]:
        state, model = self.state, self.model
        entry: dict[str, Any] = {
            "step": step,
            "epoch": step / self.steps_per_epoch,
            "train_loss": state.loss_sum / max(1, state.loss_count),
            "lr": state.last_lr,
        }
        if self.evaluators:
            model.eval()
            try:
                with _forked_rng(self.device), torch.no_grad():
                    for name, evaluate in self.evaluators.items():
                        entry[name] = float(evaluate(model))
            finally:
                model.train()
        entry["time_s"] = self.elapsed()
        return entry

    def save(self, step: int) -> None:
        """Write the checkpoint (rank 0, atomically) unless a parameter became non-finite."""
        bad = [name for name, p in self.model.named_parameters() if not torch.isfinite(p).all()]
        if bad:
            raise NonFiniteLossError(
                f"Parameters {bad[:5]} became non-finite by step {step}; the checkpoint was not "
                f"overwritten ({_last_good(self.last_saved)}). Lower lr, enable grad_clip, or check "
                "the ActNorm/data-dependent initialisation.",
                step=step,
                checkpoint_path=self.last_saved,
            )
        rng = [_capture_rng(self.device)]
        if self.world_size > 1:
            gathered: list[Any] = [None] * self.world_size
            dist.all_gather_object(gathered, rng[0])
            rng = gathered
        _rank0_then_share(lambda: _atomic_save(self._checkpoint(step, rng), self.checkpoint_path),
                          self.rank, self.world_size)
        self.last_saved = self.checkpoint_path

    def _checkpoint(self, step: int, rng: list[dict[str, torch.Tensor | None]]) -> dict[str, Any]:
        """What ``checkpoint.pt`` holds (format :data:`_CHECKPOINT_FORMAT`)."""
        config, state = self.config, self.state
        return {
            "format_version": _CHECKPOINT_FORMAT,
            "config": config.to_dict(),
            "model": self.model.state_dict(),
            "optimizer": self.optimizer.state_dict(),
            "scheduler": {
                "schedule": config.schedule,
                "warmup_steps": config.warmup_steps,
                "total_steps": self.total_steps,
                "last_lr": state.last_lr,
            },
            "step": step,
            "epoch": step // self.steps_per_epoch,
            "batch_in_epoch": step % self.steps_per_epoch,
            "num_examples": self.num_examples,
            "world_size": self.world_size,
            "history": state.history,
            "loss_window": {"sum": state.loss_sum, "count": state.loss_count},
            "rng": [
                {k: (v.cpu() if v is not None else None) for k, v in r.items()}
                for r in rng
            ],
            "time_s": self.elapsed(),
        }


def _generator(device: torch.device, *parts: object) -> torch.Generator:
    return torch.Generator(device=device).manual_seed(derive_seed(*parts))


def _mean_over_ranks(loss: torch.Tensor, world_size: int) -> float:
    """Global mean loss; a NaN/inf on any rank makes it non-finite everywhere, so all ranks stop."""
    if world_size == 1:
        return float(loss)
    value = loss.float().clone()
    dist.all_reduce(value, op=dist.ReduceOp.SUM)
    return float(value) / world_size


def _forked_rng(device: torch.device) -> contextlib.AbstractContextManager[None]:
    if device.type == "cuda":
        return torch.random.fork_rng(devices=[device], device_type="cuda")
    return torch.random.fork_rng(devices=[])


def _last_good(path: Path | None) -> str:
    if path is None:
        return "no checkpoint had been written yet"
    return (
        f"the last good checkpoint is {path} (to continue from it with other settings, load it "
        "with load_checkpoint_weights into a run in a new workdir)"
    )
