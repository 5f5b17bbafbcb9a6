"""Reusable mathematical checks for invertible layers (imported by the flow tests).

A layer follows the ood_core.flows contract: ``forward(x) -> (z, logdet)``,
``inverse(z) -> (x, logdet)``, ``logdet`` shaped ``[B]``; ``z`` may be a tensor or a
(nested) list/tuple of tensors (``Split``, ``Glow``).
"""

from __future__ import annotations

from typing import Any, Callable

import torch


def flatten_output(z: Any) -> torch.Tensor:
    """Concatenate a tensor or (nested) sequence of ``[B, ...]`` tensors into ``[B, D]``."""
    if isinstance(z, torch.Tensor):
        return z.flatten(1)
    return torch.cat([flatten_output(part) for part in z], dim=1)


def _tensors(z: Any) -> list[torch.Tensor]:
    if isinstance(z, torch.Tensor):
        return [z]
    return [t for part in z for t in _tensors(part)]


def check_flow(layer: torch.nn.Module, x: torch.Tensor, atol: float, rtol: float = 1e-5):
    """Assert the invertible-layer contract on ``x``; returns ``(z, logdet)`` of ``forward``.

    * ``logdet`` of both directions is a finite ``[B]`` tensor of ``x``'s dtype;
    * every output tensor keeps ``x``'s dtype, batch size and is finite; the total number of
      output values equals the number of inputs (a bijection keeps the dimension);
    * ``inverse(forward(x)) == x`` and the two log-dets sum to zero (within ``atol``);
    * ``forward`` is deterministic: a second call (after any data-dependent init) agrees.
    """
    batch = x.shape[0]
    z, logdet = layer(x)
    assert isinstance(logdet, torch.Tensor), f"forward logdet is {type(logdet)}"
    assert logdet.shape == (batch,), f"forward logdet shape {tuple(logdet.shape)} != ({batch},)"
    assert logdet.dtype == x.dtype
    assert torch.isfinite(logdet).all()
    for t in _tensors(z):
        assert t.dtype == x.dtype and t.shape[0] == batch
        assert torch.isfinite(t).all()
    assert flatten_output(z).shape == x.flatten(1).shape

    x_back, logdet_inverse = layer.inverse(z)
    assert logdet_inverse.shape == (batch,) and logdet_inverse.dtype == x.dtype
    assert torch.isfinite(logdet_inverse).all()
    assert x_back.shape == x.shape and x_back.dtype == x.dtype
    torch.testing.assert_close(x_back, x, atol=atol, rtol=rtol)
    torch.testing.assert_close(logdet + logdet_inverse, torch.zeros_like(logdet), atol=atol, rtol=0)

    z_again, logdet_again = layer(x)
    torch.testing.assert_close(flatten_output(z_again), flatten_output(z), atol=0, rtol=0)
    torch.testing.assert_close(logdet_again, logdet, atol=0, rtol=0)
    return z, logdet


def jacobian_logdet(layer: Callable[[torch.Tensor], tuple[Any, torch.Tensor]], x1: torch.Tensor):
    """``(slogdet of the autograd Jacobian dz/dx, layer's logdet)`` for one example ``[1, ...]``.

    ``z`` is the flattened concatenation of all outputs. Use float64 inputs and modules.
    """
    assert x1.shape[0] == 1
    shape = x1.shape

    def flat_map(v: torch.Tensor) -> torch.Tensor:
        z, _ = layer(v.view(shape))
        return flatten_output(z).reshape(-1)

    jac = torch.autograd.functional.jacobian(flat_map, x1.reshape(-1), vectorize=True)
    sign, log_abs_det = torch.linalg.slogdet(jac)
    assert sign != 0
    _, logdet = layer(x1)
    return log_abs_det, logdet[0]


@torch.no_grad()
def perturb_parameters(module: torch.nn.Module, scale: float, generator: torch.Generator) -> None:
    """Add ``scale * N(0, 1)`` to every parameter, so zero-initialised parts become non-trivial."""
    for parameter in module.parameters():
        noise = torch.randn(parameter.shape, generator=generator, dtype=torch.float64)
        parameter.add_(scale * noise.to(parameter.dtype))
