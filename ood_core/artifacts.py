"""The one place that owns disk: a content-addressed cache of trained models and per-example scores.

Layout: ``<root>/<kind>/<key>/`` where ``key`` is the first 16 hex digits of the sha256 of the
canonical JSON of the config that produced the artifact. The folder holds ``config.json``,
``meta.json`` (hardware, versions, wall time, date), the payload (``arrays.npz``, ``model.pt``,
``table.csv``...) and, written last, ``DONE``. A folder without ``DONE`` is never trusted.

Atomicity: an artifact is assembled in a private temporary folder beside its final place and moved
there with one ``os.rename``; a run killed midway leaves only a ``.tmp-*`` folder that is ignored and
cleaned up later. Long computations that must survive interruption (training) get a stable
``<key>.work/`` folder from :meth:`ArtifactStore.workdir` for their checkpoints.

Roots: ``artifacts/`` in the checkout (``$OOD_ARTIFACTS`` overrides) for what this machine computed;
``results/`` (committed) for small paper-profile results made on a GPU, read by the book beside the
CPU runs.
"""

from __future__ import annotations

import datetime as _dt
import hashlib
import json
import logging
import os
import platform
import shutil
import tempfile
from pathlib import Path
from typing import Any, Callable

import numpy as np
import torch

log = logging.getLogger(__name__)

ARTIFACTS_ENV = "OOD_ARTIFACTS"
_REPO = Path(__file__).resolve().parent.parent


def _jsonable(obj: Any) -> Any:
    if hasattr(obj, "to_dict"):
        return _jsonable(obj.to_dict())
    if isinstance(obj, dict):
        return {str(k): _jsonable(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_jsonable(v) for v in obj]
    if isinstance(obj, (np.integer,)):
        return int(obj)
    if isinstance(obj, (np.floating,)):
        return float(obj)
    if isinstance(obj, Path):
        return str(obj)
    return obj


def canonical_json(config: Any) -> str:
    return json.dumps(_jsonable(config), sort_keys=True, separators=(",", ":"))


def config_key(config: Any) -> str:
    """16 hex digits of the sha256 of the config's canonical JSON (keys sorted, tuples as lists)."""
    return hashlib.sha256(canonical_json(config).encode()).hexdigest()[:16]


def default_root() -> Path:
    env = os.environ.get(ARTIFACTS_ENV)
    return Path(env).expanduser() if env else _REPO / "artifacts"


RESULTS_ENV = "OOD_RESULTS"


def results_root() -> Path:
    """Committed paper-profile results (small: scores, metrics, curves; never weights).

    ``$OOD_RESULTS`` overrides ``results/`` in the checkout (used to collect a GPU run's output).
    """
    env = os.environ.get(RESULTS_ENV)
    return Path(env).expanduser() if env else _REPO / "results"


def hardware() -> dict:
    info = {"platform": platform.platform(), "python": platform.python_version(), "torch": torch.__version__,
            "cpu_count": os.cpu_count(), "torch_threads": torch.get_num_threads()}
    if torch.cuda.is_available():
        info["gpu"] = torch.cuda.get_device_name(0)
    return info


def content_digest(x: torch.Tensor, length: int = 16) -> str:
    """Hex sha256 of a CPU tensor's bytes (its first ``length`` digits): part of the keys of scores."""
    return hashlib.sha256(x.contiguous().numpy().tobytes()).hexdigest()[:length]


def is_main_process() -> bool:
    """True outside ``torch.distributed`` and on rank 0 under it: the one process that writes."""
    return not torch.distributed.is_initialized() or torch.distributed.get_rank() == 0


def wait_for_main_process() -> None:
    """Barrier under ``torch.distributed`` (the other ranks wait for rank 0's write); no-op otherwise."""
    if torch.distributed.is_initialized():
        torch.distributed.barrier()


class ArtifactStore:
    """Content-addressed artifacts under ``root``: ``<kind>/<config_key(config)>/``."""

    def __init__(self, root: Path | str | None = None):
        self.root = Path(root) if root is not None else default_root()

    def path(self, kind: str, config: Any) -> Path:
        return self.root / kind / config_key(config)

    def exists(self, kind: str, config: Any) -> bool:
        return (self.path(kind, config) / "DONE").is_file()

    def workdir(self, kind: str, config: Any) -> Path:
        """A stable folder for checkpoints of a computation that may be interrupted and resumed."""
        p = self.root / kind / (config_key(config) + ".work")
        p.mkdir(parents=True, exist_ok=True)
        (p / "config.json").write_text(json.dumps(_jsonable(config), indent=1, sort_keys=True))
        return p

    # -- writing ---------------------------------------------------------------------------------
    def save(self, kind: str, config: Any, *, arrays: dict | None = None, state_dict: dict | None = None,
             files: dict[str, str] | None = None, meta: dict | None = None) -> Path:
        """Write an artifact atomically and return its folder; an existing complete one is kept."""
        final = self.path(kind, config)
        final.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=f".tmp-{final.name}-", dir=final.parent))
        try:
            (tmp / "config.json").write_text(json.dumps(_jsonable(config), indent=1, sort_keys=True))
            full_meta = {"created": _dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
                         "hardware": hardware(), **(meta or {})}
            (tmp / "meta.json").write_text(json.dumps(_jsonable(full_meta), indent=1, sort_keys=True))
            if arrays is not None:
                np.savez_compressed(tmp / "arrays.npz", **{k: np.asarray(v) for k, v in arrays.items()})
            if state_dict is not None:
                torch.save(state_dict, tmp / "model.pt")
            for fname, text in (files or {}).items():
                (tmp / fname).write_text(text)
            with open(tmp / "DONE", "w") as f:
                f.write(config_key(config) + "\n")
                f.flush()
                os.fsync(f.fileno())
            if final.exists():
                if (final / "DONE").is_file():  # another process finished first: keep theirs
                    shutil.rmtree(tmp, ignore_errors=True)
                    return final
                shutil.rmtree(final)  # an untrusted leftover without DONE
            os.rename(tmp, final)
        except BaseException:
            shutil.rmtree(tmp, ignore_errors=True)
            raise
        return final

    # -- reading ---------------------------------------------------------------------------------
    def _require(self, kind: str, config: Any) -> Path:
        p = self.path(kind, config)
        if not (p / "DONE").is_file():
            raise FileNotFoundError(f"no complete artifact {kind}/{p.name} under {self.root}; compute it first")
        return p

    def load_arrays(self, kind: str, config: Any) -> dict[str, np.ndarray]:
        with np.load(self._require(kind, config) / "arrays.npz", allow_pickle=False) as z:
            return {k: z[k] for k in z.files}

    def load_state_dict(self, kind: str, config: Any, map_location: str | torch.device = "cpu") -> dict:
        return torch.load(self._require(kind, config) / "model.pt", map_location=map_location, weights_only=True)

    def load_meta(self, kind: str, config: Any) -> dict:
        return json.loads((self._require(kind, config) / "meta.json").read_text())

    def read_text(self, kind: str, config: Any, fname: str) -> str:
        return (self._require(kind, config) / fname).read_text()

    def cached_arrays(self, kind: str, config: Any, compute: Callable[[], dict], meta: dict | None = None
                      ) -> dict[str, np.ndarray]:
        """Load the arrays for ``config`` or compute, save and return them."""
        if not self.exists(kind, config):
            log.info("computing %s/%s", kind, config_key(config))
            self.save(kind, config, arrays=compute(), meta=meta)
        return self.load_arrays(kind, config)

    def clean_tmp(self) -> int:
        """Remove leftovers of killed writes (``.tmp-*`` folders); returns how many."""
        n = 0
        for p in self.root.glob("*/.tmp-*"):
            shutil.rmtree(p, ignore_errors=True)
            n += 1
        return n
