"""Tests for ood_core.train: determinism, exact resume, safe checkpoints and DDP equivalence.

Everything runs on CPU with models of a few dozen parameters.
"""

from __future__ import annotations

import math
import os
import socket
from pathlib import Path

import pytest
import torch
import torch.distributed as dist
import torch.multiprocessing as mp
from torch import nn
from torch.utils.data import TensorDataset

from ood_core import train as train_module
from ood_core.train import (
    CHECKPOINT_NAME,
    CheckpointMismatchError,
    NonFiniteLossError,
    PeerRankError,
    ShardedEpochSampler,
    TrainConfig,
    TrainConfigError,
    derive_seed,
    load_checkpoint_weights,
    lr_at_step,
    train,
)

NUM_EXAMPLES = 40  # with batch 8: 5 steps per epoch


# --------------------------------------------------------------------------------------------
# Tiny models and data (module level so spawned processes can unpickle them)
# --------------------------------------------------------------------------------------------


class TinyRegressor(nn.Module):
    """MLP on 4 features with dropout (uses the global RNG) and an ActNorm-like init flag."""

    def __init__(self, dropout: float = 0.2) -> None:
        super().__init__()
        self.hidden = nn.Linear(4, 8)
        self.dropout = nn.Dropout(dropout)
        self.out = nn.Linear(8, 1)
        self.register_buffer("initialized", torch.tensor(False))

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return self.out(self.dropout(torch.tanh(self.hidden(x))))


def make_data(seed: int = 0) -> tuple[TensorDataset, torch.Tensor, torch.Tensor]:
    """uint8 "images" with 4 pixels and a float target, plus a float held-out set."""
    generator = torch.Generator().manual_seed(seed)
    x = torch.randint(0, 256, (NUM_EXAMPLES, 4), generator=generator, dtype=torch.uint8)
    weights = torch.tensor([[0.5], [-1.0], [0.25], [2.0]])
    y = (x.float() / 255) @ weights + 0.1
    x_val = torch.rand(16, 4, generator=generator)
    y_val = x_val @ weights + 0.1
    return TensorDataset(x, y), x_val, y_val


def mse_loss(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> torch.Tensor:
    x, y = batch
    if x.dtype == torch.uint8:
        x = x.float() / 255
    return ((model(x) - y) ** 2).mean()


def dequantize(
    batch: tuple[torch.Tensor, ...], generator: torch.Generator
) -> tuple[torch.Tensor, ...]:
    """Uniform dequantisation noise in [0, 1/256), drawn from the trainer's generator."""
    x, y = batch
    noise = torch.rand(x.shape, generator=generator, device=generator.device)
    return (x.float() / 256 + noise / 256, y)


def centre_init(model: nn.Module, batch: tuple[torch.Tensor, ...]) -> None:
    """Data-dependent init in the spirit of ActNorm: centre the hidden pre-activations."""
    x = batch[0].float()
    if batch[0].dtype == torch.uint8:
        x = x / 255
    model.hidden.bias -= model.hidden(x).mean(dim=0)
    model.initialized.fill_(True)


def fresh_model(dropout: float = 0.2) -> TinyRegressor:
    torch.manual_seed(123)
    return TinyRegressor(dropout)


def base_config(**overrides) -> TrainConfig:
    settings = dict(
        epochs=3,
        batch_size=8,
        lr=0.05,
        optimizer="adam",
        warmup_steps=3,
        schedule="cosine",
        grad_clip=1.0,
        seed=7,
        checkpoint_every=4,
    )
    settings.update(overrides)
    return TrainConfig(**settings)


def val_evaluator(x_val: torch.Tensor, y_val: torch.Tensor):
    def evaluate(model: nn.Module) -> float:
        return float(((model(x_val) - y_val) ** 2).mean())

    return evaluate


def rng_consuming_evaluator(model: nn.Module) -> float:
    """Draws from the global RNG: the trainer must fence it off from the training stream."""
    return float(torch.rand(()))


def params_of(model: nn.Module) -> dict[str, torch.Tensor]:
    return {k: v.detach().clone() for k, v in model.state_dict().items()}


def assert_bit_identical(a: dict[str, torch.Tensor], b: dict[str, torch.Tensor]) -> None:
    assert a.keys() == b.keys()
    for key in a:
        assert torch.equal(a[key], b[key]), f"{key} differs"


def without_time(history: list[dict]) -> list[dict]:
    return [{k: v for k, v in entry.items() if k != "time_s"} for entry in history]


# --------------------------------------------------------------------------------------------
# Config, schedule, sampler
# --------------------------------------------------------------------------------------------


def test_config_round_trip_and_validation():
    config = base_config(max_steps=11, amp_bf16=True)
    assert TrainConfig.from_dict(config.to_dict()) == config
    with pytest.raises(TrainConfigError, match="optimizer"):
        TrainConfig(epochs=1, batch_size=8, lr=0.1, optimizer="lbfgs")
    with pytest.raises(TrainConfigError, match="schedule"):
        TrainConfig(epochs=1, batch_size=8, lr=0.1, schedule="step")
    with pytest.raises(TrainConfigError, match="lr"):
        TrainConfig(epochs=1, batch_size=8, lr=0.0)
    with pytest.raises(TrainConfigError, match="Unknown"):
        TrainConfig.from_dict({**config.to_dict(), "momentum": 0.9})


def test_lr_schedule_warmup_then_constant_and_cosine():
    constant = TrainConfig(epochs=1, batch_size=1, lr=2.0, warmup_steps=4)
    assert [lr_at_step(s, constant, 10) for s in range(6)] == [0.5, 1.0, 1.5, 2.0, 2.0, 2.0]
    cosine = TrainConfig(epochs=1, batch_size=1, lr=2.0, warmup_steps=2, schedule="cosine")
    # decay over steps 2..12: t = 0, 0.5, 1 at steps 2, 7, 12
    assert lr_at_step(1, cosine, 12) == pytest.approx(2.0)
    assert lr_at_step(2, cosine, 12) == pytest.approx(2.0)
    assert lr_at_step(7, cosine, 12) == pytest.approx(1.0)
    assert lr_at_step(11, cosine, 12) == pytest.approx(2.0 * 0.5 * (1 + math.cos(math.pi * 0.9)))
    no_warmup = TrainConfig(epochs=1, batch_size=1, lr=0.3)
    assert lr_at_step(0, no_warmup, 5) == 0.3


def test_lr_schedule_linear_decay_is_the_one_cycle_triangle():
    linear = TrainConfig(epochs=1, batch_size=1, lr=2.0, warmup_steps=2, schedule="linear")
    # warm-up 1.0, 2.0; then decay over steps 2..12 with t = (step - 2) / 10: lr = 2 (1 - t)
    assert [lr_at_step(s, linear, 12) for s in range(2)] == [1.0, 2.0]
    for step in range(2, 14):
        assert lr_at_step(step, linear, 12) == pytest.approx(2.0 * max(0.0, 1 - (step - 2) / 10))
    no_warmup = TrainConfig(epochs=1, batch_size=1, lr=0.5, schedule="linear")
    assert [lr_at_step(s, no_warmup, 4) for s in range(4)] == pytest.approx([0.5, 0.375, 0.25, 0.125])


def test_optimizer_uses_the_scheduled_learning_rate(tmp_path):
    data, _, _ = make_data()
    config = base_config(epochs=2, eval_every=1)
    result = train(fresh_model(), mse_loss, data, config, tmp_path, progress=False)
    total = config.epochs * (NUM_EXAMPLES // config.batch_size)
    assert [e["step"] for e in result.history] == list(range(1, total + 1))
    for entry in result.history:  # the record at step s reports the lr of update s - 1
        assert entry["lr"] == pytest.approx(lr_at_step(entry["step"] - 1, config, total))
    assert result.history[0]["lr"] == pytest.approx(config.lr / 3)


def test_sharded_sampler_is_world_size_independent():
    single = ShardedEpochSampler(21, 6, seed=3)
    assert len(single) == 3  # drop_last: 21 // 6
    shards = [ShardedEpochSampler(21, 6, seed=3, rank=r, world_size=3) for r in range(3)]
    for epoch in range(2):
        single.set_epoch(epoch)
        for s in shards:
            s.set_epoch(epoch)
        single_batches = list(single)
        rank_batches = [list(s) for s in shards]
        for k, global_batch in enumerate(single_batches):
            # rank r holds positions r::3 of the global batch, so the union is the batch
            interleaved = [rank_batches[j % 3][k][j // 3] for j in range(6)]
            assert interleaved == global_batch
        used = [i for batch in single_batches for i in batch]
        assert len(set(used)) == 18  # no repeats within an epoch
    assert not torch.equal(single.permutation(0), single.permutation(1))
    assert torch.equal(single.permutation(1), ShardedEpochSampler(21, 6, seed=3).permutation(1))
    with pytest.raises(TrainConfigError, match="divisible"):
        ShardedEpochSampler(21, 6, rank=0, world_size=4)


def test_derive_seed_is_stable_and_separates_streams():
    assert derive_seed(7, "order", 0) == derive_seed(7, "order", 0)
    assert len({derive_seed(7, "order", e) for e in range(100)}) == 100
    assert derive_seed(7, "batch", 1, 0) != derive_seed(7, "batch", 0, 1)


# --------------------------------------------------------------------------------------------
# Resume
# --------------------------------------------------------------------------------------------


def test_resume_is_bit_identical_and_keeps_history(tmp_path):
    data, x_val, y_val = make_data()
    evaluators = {"val_mse": val_evaluator(x_val, y_val), "noisy": rng_consuming_evaluator}
    config = base_config()
    common = dict(evaluators=evaluators, batch_transform=dequantize, progress=False)

    init_calls = []

    def counting_init(model, batch):
        init_calls.append(batch[0].shape[0])
        centre_init(model, batch)

    # A: uninterrupted
    model_a = fresh_model()
    result_a = train(
        model_a, mse_loss, data, config, tmp_path / "a", init_fn=counting_init, **common
    )
    assert result_a.steps == 15
    assert [e["step"] for e in result_a.history] == [5, 10, 15]
    assert init_calls == [8]  # once, on the whole first global batch

    # B: stopped by max_steps in the middle of epoch 2, then resumed without it
    model_b = fresh_model()
    first = train(
        model_b, mse_loss, data, config.__class__(**{**config.to_dict(), "max_steps": 7}),
        tmp_path / "b", init_fn=counting_init, **common,
    )
    assert first.steps == 7 and [e["step"] for e in first.history] == [5, 7]
    model_b2 = fresh_model()  # a new process would rebuild the model from scratch
    second = train(
        model_b2, mse_loss, data, config, tmp_path / "b", init_fn=counting_init, **common
    )
    assert init_calls == [8, 8]  # not called again on resume
    assert second.resumed_from_step == 7 and second.steps == 15
    assert_bit_identical(params_of(model_a), params_of(model_b2))
    steps_b = [e["step"] for e in second.history]
    assert steps_b == [5, 7, 10, 15]  # history from before the interruption survived
    assert without_time(second.history)[0] == without_time(result_a.history)[0]
    for a_entry, b_entry in zip(result_a.history[1:], second.history[2:]):
        assert a_entry["val_mse"] == b_entry["val_mse"]  # same parameters, same measurement
        assert a_entry["noisy"] == b_entry["noisy"]  # same RNG state at the same step

    # C: crash inside an evaluator at step 10; the last checkpoint is from step 8
    calls = []

    def crashing(model):
        calls.append(1)
        if len(calls) == 2:
            raise KeyboardInterrupt("simulated kill")
        return evaluators["val_mse"](model)

    with pytest.raises(KeyboardInterrupt):
        train(
            fresh_model(), mse_loss, data, config, tmp_path / "c",
            evaluators={"val_mse": crashing, "noisy": rng_consuming_evaluator},
            batch_transform=dequantize,
            init_fn=centre_init, progress=False,
        )
    saved = torch.load(tmp_path / "c" / CHECKPOINT_NAME, weights_only=True)
    assert saved["step"] == 8 and saved["epoch"] == 1 and saved["batch_in_epoch"] == 3
    model_c = fresh_model()
    result_c = train(model_c, mse_loss, data, config, tmp_path / "c", init_fn=centre_init, **common)
    assert result_c.resumed_from_step == 8
    assert_bit_identical(params_of(model_a), params_of(model_c))
    # the running train-loss window was checkpointed too, so the whole history matches A
    assert without_time(result_c.history) == without_time(result_a.history)


def test_bf16_autocast_on_cpu_is_used_and_resumes_bit_identically(tmp_path):
    data, _, _ = make_data()
    config = base_config(amp_bf16_cpu=True, channels_last=True)
    seen = []

    def recording_loss(model, batch):
        out = model(batch[0].float() / 255)
        seen.append(out.dtype)
        return ((out.float() - batch[1]) ** 2).mean()

    model_a = fresh_model()
    train(model_a, recording_loss, data, config, tmp_path / "a", progress=False)
    assert set(seen) == {torch.bfloat16}  # the linear layers ran in bf16
    model_fp32 = fresh_model()
    train(model_fp32, mse_loss, data, base_config(), tmp_path / "fp32", progress=False)
    assert not torch.equal(model_a.out.weight, model_fp32.out.weight)
    # amp_bf16 alone means CUDA only: on the CPU the run is the float32 one
    model_cuda_only = fresh_model()
    train(model_cuda_only, mse_loss, data, base_config(amp_bf16=True), tmp_path / "cuda_only", progress=False)
    assert_bit_identical(params_of(model_cuda_only), params_of(model_fp32))

    stopped = TrainConfig(**{**config.to_dict(), "max_steps": 7})
    train(fresh_model(), recording_loss, data, stopped, tmp_path / "b", progress=False)
    model_b = fresh_model()
    train(model_b, recording_loss, data, config, tmp_path / "b", progress=False)
    assert_bit_identical(params_of(model_a), params_of(model_b))


def test_checkpoint_from_before_a_new_field_resumes(tmp_path):
    """A checkpoint written before ``amp_bf16_cpu`` existed held its default: no mismatch."""
    data, _, _ = make_data()
    model_a = fresh_model()
    train(model_a, mse_loss, data, base_config(), tmp_path / "a", progress=False)
    train(fresh_model(), mse_loss, data, base_config(max_steps=7), tmp_path / "b", progress=False)
    path = tmp_path / "b" / CHECKPOINT_NAME
    checkpoint = torch.load(path, weights_only=True)
    del checkpoint["config"]["amp_bf16_cpu"]
    torch.save(checkpoint, path)
    model_b = fresh_model()
    result = train(model_b, mse_loss, data, base_config(), tmp_path / "b", progress=False)
    assert result.resumed_from_step == 7
    assert_bit_identical(params_of(model_a), params_of(model_b))


def test_completed_run_is_not_retrained(tmp_path):
    data, _, _ = make_data()
    config = base_config(epochs=1)
    first = train(fresh_model(), mse_loss, data, config, tmp_path, progress=False)

    def must_not_run(model, batch):
        raise AssertionError("loss_fn called on a finished run")

    model = fresh_model()
    again = train(model, must_not_run, data, config, tmp_path, progress=False)
    assert again.steps == first.steps and again.history == first.history
    assert again.resumed_from_step == first.steps


def test_config_mismatch_raises_with_advice(tmp_path):
    data, _, _ = make_data()
    train(fresh_model(), mse_loss, data, base_config(epochs=1), tmp_path, progress=False)
    other_lr = base_config(epochs=1, lr=0.1)
    expected = r"lr: checkpoint=0\.05, now=0\.1.*new workdir"
    with pytest.raises(CheckpointMismatchError, match=expected):
        train(fresh_model(), mse_loss, data, other_lr, tmp_path, progress=False)
    smaller = TensorDataset(*(t[:32] for t in data.tensors))
    with pytest.raises(CheckpointMismatchError, match="num_examples"):
        train(fresh_model(), mse_loss, smaller, base_config(epochs=1), tmp_path, progress=False)


# --------------------------------------------------------------------------------------------
# Checkpoint safety
# --------------------------------------------------------------------------------------------


def test_checkpoint_loads_with_weights_only(tmp_path):
    data, x_val, y_val = make_data()
    model = fresh_model()
    result = train(
        model, mse_loss, data, base_config(optimizer="sgd", epochs=2), tmp_path,
        evaluators={"val_mse": val_evaluator(x_val, y_val)}, progress=False,
    )
    checkpoint = torch.load(result.checkpoint_path, weights_only=True)
    assert checkpoint["step"] == 10
    assert checkpoint["config"] == base_config(optimizer="sgd", epochs=2).to_dict()
    rng = checkpoint["rng"][0]["cpu"]
    assert rng.dtype == torch.uint8
    restored = fresh_model()
    meta = load_checkpoint_weights(restored, tmp_path)  # a workdir works as well as a file
    assert_bit_identical(params_of(model), params_of(restored))
    assert meta["history"] == result.history and meta["step"] == 10


def test_nan_loss_stops_and_keeps_last_good_checkpoint(tmp_path):
    data, _, _ = make_data()
    calls = []

    def nan_at_step_three(model, batch):
        calls.append(1)
        loss = mse_loss(model, batch)
        return loss * float("nan") if len(calls) == 3 else loss

    config = base_config(checkpoint_every=2)
    with pytest.raises(NonFiniteLossError, match="step 3") as excinfo:
        train(fresh_model(), nan_at_step_three, data, config, tmp_path, progress=False)
    assert excinfo.value.step == 3
    assert excinfo.value.checkpoint_path == tmp_path / CHECKPOINT_NAME
    assert "grad_clip" in str(excinfo.value) and "ActNorm" in str(excinfo.value)
    checkpoint = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert checkpoint["step"] == 2
    floats = [v for v in checkpoint["model"].values() if v.is_floating_point()]
    assert all(torch.isfinite(v).all() for v in floats)


def test_nonfinite_parameters_are_never_saved(tmp_path):
    """A finite loss with an infinite gradient corrupts the weights; the save must refuse."""
    data, _, _ = make_data()
    calls = []

    def infinite_gradient_at_step_three(model, batch):
        calls.append(1)
        loss = mse_loss(model, batch)
        if len(calls) == 3:  # sqrt'(0) = inf while the value stays 0
            weight = model.out.weight
            loss = loss + torch.sqrt(weight - weight.detach()).sum()
        return loss

    config = base_config(optimizer="sgd", grad_clip=None, checkpoint_every=1)
    with pytest.raises(NonFiniteLossError) as excinfo:
        train(
            fresh_model(), infinite_gradient_at_step_three, data, config, tmp_path, progress=False
        )
    assert excinfo.value.step == 3
    checkpoint = torch.load(tmp_path / CHECKPOINT_NAME, weights_only=True)
    assert checkpoint["step"] == 2
    assert torch.isfinite(checkpoint["model"]["out.weight"]).all()

    # with grad_clip the infinite norm is caught before the update
    with pytest.raises(NonFiniteLossError, match="Gradient norm"):
        calls.clear()
        train(
            fresh_model(), infinite_gradient_at_step_three, data, base_config(checkpoint_every=1),
            tmp_path / "clipped", progress=False,
        )


def test_checkpoint_write_is_atomic(tmp_path, monkeypatch):
    data, _, _ = make_data()
    config = base_config(epochs=2, max_steps=4)
    train(fresh_model(), mse_loss, data, config, tmp_path, progress=False)
    path = tmp_path / CHECKPOINT_NAME
    before = path.read_bytes()

    def torn_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise OSError("disk full (simulated)")

    monkeypatch.setattr(train_module.torch, "save", torn_save)
    with pytest.raises(OSError, match="disk full"):
        longer = base_config(epochs=2, max_steps=6)
        train(fresh_model(), mse_loss, data, longer, tmp_path, progress=False)
    monkeypatch.undo()
    assert path.read_bytes() == before
    assert sorted(p.name for p in tmp_path.iterdir()) == [CHECKPOINT_NAME]
    assert torch.load(path, weights_only=True)["step"] == 4


def test_evaluators_see_eval_mode_without_grad(tmp_path):
    data, _, _ = make_data()
    seen = []

    def probe(model):
        seen.append((model.training, torch.is_grad_enabled()))
        return 0.0

    model = fresh_model()
    config = base_config(epochs=1)
    train(model, mse_loss, data, config, tmp_path, evaluators={"probe": probe}, progress=False)
    assert seen == [(False, False)]
    assert model.training


def test_batch_larger_than_dataset_is_a_config_error(tmp_path):
    data, _, _ = make_data()
    with pytest.raises(TrainConfigError, match="fewer than batch_size"):
        train(fresh_model(), mse_loss, data, base_config(batch_size=64), tmp_path, progress=False)


# --------------------------------------------------------------------------------------------
# DDP on CPU: two gloo processes follow the single-process trajectory
# --------------------------------------------------------------------------------------------


def _free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_STREAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


def _ddp_config() -> TrainConfig:
    return TrainConfig(
        epochs=2, batch_size=8, lr=0.05, optimizer="sgd", seed=11, checkpoint_every=3
    )


def _ddp_worker(rank: int, world_size: int, port: int, out_dir: str) -> None:
    torch.set_num_threads(1)
    os.environ.update(MASTER_ADDR="127.0.0.1", MASTER_PORT=str(port))
    dist.init_process_group("gloo", rank=rank, world_size=world_size)
    try:
        out = Path(out_dir)
        data, x_val, y_val = make_data()
        model = fresh_model(dropout=0.0)
        result = train(
            model, mse_loss, data, _ddp_config(), out / "ddp_run",
            evaluators={"val_mse": val_evaluator(x_val, y_val)},
            init_fn=centre_init, device="cpu", progress=False,
        )
        torch.save({"params": params_of(model), "history": result.history}, out / f"rank{rank}.pt")

        # rank 0's evaluator fails: every rank must stop instead of hanging at a collective
        def fails_on_rank0(model):
            if dist.get_rank() == 0:
                raise RuntimeError("evaluator bug")
            return 0.0

        try:
            train(
                fresh_model(dropout=0.0), mse_loss, data, _ddp_config(), out / "ddp_fail",
                evaluators={"bad": fails_on_rank0}, device="cpu", progress=False,
            )
            outcome = "no error"
        except PeerRankError:
            outcome = "PeerRankError"
        except RuntimeError as exc:
            outcome = f"RuntimeError: {exc}"
        (out / f"outcome{rank}.txt").write_text(outcome)
    finally:
        dist.destroy_process_group()


def test_ddp_two_processes_match_single_process(tmp_path):
    mp.spawn(_ddp_worker, args=(2, _free_port(), str(tmp_path)), nprocs=2, join=True)

    data, x_val, y_val = make_data()
    model = fresh_model(dropout=0.0)
    single = train(
        model, mse_loss, data, _ddp_config(), tmp_path / "single",
        evaluators={"val_mse": val_evaluator(x_val, y_val)}, init_fn=centre_init, progress=False,
    )
    rank0 = torch.load(tmp_path / "rank0.pt", weights_only=True)
    rank1 = torch.load(tmp_path / "rank1.pt", weights_only=True)
    for name, value in params_of(model).items():
        if value.is_floating_point():
            torch.testing.assert_close(rank0["params"][name], value, rtol=0, atol=1e-6)
        else:
            assert torch.equal(rank0["params"][name], value)
    assert_bit_identical(rank0["params"], rank1["params"])
    assert rank0["history"] == rank1["history"]  # rank 0 broadcasts each record
    assert [e["step"] for e in rank0["history"]] == [e["step"] for e in single.history]
    for ddp_entry, single_entry in zip(rank0["history"], single.history):
        assert ddp_entry["train_loss"] == pytest.approx(single_entry["train_loss"], abs=1e-6)
    ddp_checkpoint = torch.load(tmp_path / "ddp_run" / CHECKPOINT_NAME, weights_only=True)
    assert ddp_checkpoint["world_size"] == 2 and len(ddp_checkpoint["rng"]) == 2

    assert (tmp_path / "outcome0.txt").read_text() == "RuntimeError: evaluator bug"
    assert (tmp_path / "outcome1.txt").read_text() == "PeerRankError"
