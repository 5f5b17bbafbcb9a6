"""Units: nats, bits and bits per dimension -- the one home of ``ln 2`` and of the dequantisation offset.

Every likelihood in the package is a *discrete-data* log-likelihood in nats, ``log P(x)`` of the
uint8 image ``x`` with ``D = C * H * W`` dimensions, and every bits/dim is

    bpd = -log P(x) / (D ln 2).

A flow models a *continuous* density ``p`` on the dequantised image scaled to a unit cube (bins of
width ``2**-n_bits``), so ``log P(x) ~= log p - D n_bits ln 2`` and

    bpd = -log p / (D ln 2) + n_bits                       (:func:`continuous_bpd`),

the "+ 8" of the Glow papers for 8-bit images. Functions accept numpy arrays, torch tensors or
Python numbers and return the same kind.
"""

from __future__ import annotations

import math
from typing import TypeVar

#: ``ln 2``: nats per bit.
LN2 = math.log(2.0)

T = TypeVar("T")


def _check_dims(num_dims: int) -> None:
    if num_dims <= 0:
        raise ValueError(f"num_dims must be positive (D = C * H * W), got {num_dims}")


def bits_per_dim(log_likelihood_nats: T, num_dims: int) -> T:
    """``-log P / (D ln 2)``: a discrete-data log-likelihood in nats as bits per dimension."""
    _check_dims(num_dims)
    return -log_likelihood_nats / (num_dims * LN2)


def nats_from_bits_per_dim(bpd: T, num_dims: int) -> T:
    """The inverse of :func:`bits_per_dim`: ``log P = -bpd * D ln 2`` (nats)."""
    _check_dims(num_dims)
    return -bpd * (num_dims * LN2)


def dequantization_nats(num_dims: int, n_bits: int = 8) -> float:
    """``D n_bits ln 2``: the log-volume of one ``n_bits``-bit bin of the unit cube, in nats.

    A continuous density ``p`` on ``[0, 1)^D`` gives the discrete data ``log p - D n_bits ln 2``.
    """
    _check_dims(num_dims)
    if not 1 <= n_bits <= 16:
        raise ValueError(f"n_bits must be in 1..16, got {n_bits}")
    return num_dims * n_bits * LN2


def continuous_bpd(log_density_nats: T, num_dims: int, n_bits: int = 8) -> T:
    """Bits/dim of the discrete data from a continuous log-density on the unit-cube scale.

    ``-log p / (D ln 2) + n_bits`` (``n_bits = 8``: the "+ 8" of Glow's training loss). A uniform
    density (``log p = 0``) gives exactly ``n_bits`` bits/dim.
    """
    _check_dims(num_dims)
    return -log_density_nats / (num_dims * LN2) + n_bits
