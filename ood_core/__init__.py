"""ood_core: the library behind the ood-companion book.

Conventions used everywhere in the package:

* Images enter as ``uint8`` tensors shaped ``[B, C, H, W]``; models that need floats take
  ``[0, 1]`` floats and own any normalisation as buffers, so ID and OOD data are always treated
  identically.
* Flows are written in the *density* direction: ``forward(x) -> (z, logdet)`` maps data to latent,
  ``inverse(z) -> (x, logdet)`` maps back; ``logdet`` is always shaped ``[B]``.
* OOD scores: higher means *more in-distribution*.
"""

__version__ = "0.1.0"
