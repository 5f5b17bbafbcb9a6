"""What every image-model config shares: ``D = C*H*W`` and a JSON round trip (``to_dict``/``from_dict``).

Mixed into the frozen dataclass configs of Glow, the VAE and the PixelCNN, so that a model is
rebuilt by keyword from the JSON saved next to its weights.
"""

from __future__ import annotations

import dataclasses
from typing import Any, Mapping


class ImageModelConfig:
    """Mixin for frozen dataclasses with an ``image_shape`` field ``(C, H, W)``."""

    image_shape: tuple[int, int, int]

    @property
    def num_dims(self) -> int:
        """``D = C * H * W``, the dimension used for bits/dim."""
        c, h, w = self.image_shape
        return c * h * w

    def to_dict(self) -> dict[str, Any]:
        """JSON-friendly dict (``image_shape`` as a list); inverse of :meth:`from_dict`."""
        d = dataclasses.asdict(self)
        d["image_shape"] = list(self.image_shape)
        return d

    @classmethod
    def from_dict(cls, d: Mapping[str, Any]):
        """Rebuild from :meth:`to_dict` output; unknown keys are an error, not silently dropped."""
        known = {f.name for f in dataclasses.fields(cls)}
        unknown = set(d) - known
        if unknown:
            raise ValueError(f"unknown {cls.__name__} keys {sorted(unknown)}; known: {sorted(known)}")
        kwargs = dict(d)
        if isinstance(kwargs.get("image_shape"), list):
            kwargs["image_shape"] = tuple(kwargs["image_shape"])
        return cls(**kwargs)
