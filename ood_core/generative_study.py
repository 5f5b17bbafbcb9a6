"""VAE and PixelCNN experiments of Nalisnick et al. (2019, Figs. 1 and 8-9): train, score, tables; and ensembles.

A :class:`GenerativeRun` is everything that determines a trained VAE or PixelCNN (family, ID
dataset, the model's keyword configuration, optimisation, training subset, curve sets), cached by
its canonical JSON exactly like :class:`ood_core.glow_study.GlowRun`, and evaluated into the same
shape of object (``sets``, ``missing``, ``scores[key]["log_px" | "bpd" | ...]``, ``table``), so
the unified benchmark and the claims ledger treat every likelihood model alike.

What is scored (nats of the *discrete* image; bits/dim = ``-log P / (D ln 2)``, ``D = C H W``):

* **PixelCNN** -- the exact autoregressive ``log P(x)`` (no dequantisation);
* **VAE** -- the ELBO (one reparameterised sample, analytic KL) split into its reconstruction
  term ``E_q log p(x|z)`` and ``KL(q(z|x) || p(z))``, and the importance-weighted bound
  ``IWAE_k`` (Burda et al. 2016), the tighter of the two and the one used as ``log_px``.

Ensembles (:func:`ensemble_table`): ``M`` models that differ only in the training seed, combined
by ``log (1/M) sum_m p_m(x)`` (the ensemble's likelihood) and by WAIC, ``mean_m log p_m(x) -
var_m log p_m(x)`` (Choi et al. 2018), the fix most often tried for the inversion.
"""

from __future__ import annotations

import dataclasses
import json
import logging
import math
import os
import time
from dataclasses import dataclass, field

import numpy as np
import pandas as pd
import torch
from torch.utils.data import TensorDataset
from tqdm import tqdm

from ood_core import data, metrics
from ood_core import generative_scores as gsc
from ood_core.artifacts import ArtifactStore, content_digest, is_main_process, wait_for_main_process
from ood_core.glow_study import GlowEvaluation, curve_sets, evaluation_sets
from ood_core.train import TrainConfig, train

log = logging.getLogger(__name__)

FAMILIES = ("vae", "pixelcnn")
_LN2 = math.log(2.0)
AUROC_COL = "AUROC % (ID test vs set, score = log p)"


@dataclass(frozen=True)
class GenerativeRun:
    """One trained VAE or PixelCNN: family, data, model keywords, optimisation, tracked curves."""

    family: str  # "vae" (ood_core.vae.VAE) or "pixelcnn" (ood_core.pixelcnn.PixelCNN)
    dataset: str  # ID dataset name (ood_core.data)
    model: dict  # keyword arguments of VAEConfig / PixelCNNConfig other than image_shape
    train: TrainConfig
    n_train: int | None = None  # training subset (None = the whole split)
    n_curve: int = 500  # examples per set evaluated along training
    curve_sets: tuple[str, ...] = ("mnist",)
    eval_batch: int = 256
    iwae_k: int = 16  # importance samples of the VAE's IWAE bound (ignored for the PixelCNN)

    def __post_init__(self):
        if self.family not in FAMILIES:
            raise ValueError(f"family must be one of {FAMILIES}, got {self.family!r}")

    def with_seed(self, seed: int) -> "GenerativeRun":
        """The same run with another training seed (initialisation, batch order, training subset)."""
        return dataclasses.replace(self, train=dataclasses.replace(self.train, seed=seed))

    def on(self, dataset: str, curve_sets: tuple[str, ...] | None = None) -> "GenerativeRun":
        """The same recipe trained on another ID dataset of the same shape."""
        return dataclasses.replace(self, dataset=dataset,
                                   curve_sets=self.curve_sets if curve_sets is None else tuple(curve_sets))

    @property
    def model_config(self):
        shape = data.spec(self.dataset).shape
        if self.family == "vae":
            from ood_core.vae import VAEConfig

            return VAEConfig(image_shape=shape, **self.model)
        from ood_core.pixelcnn import PixelCNNConfig

        return PixelCNNConfig(image_shape=shape, **self.model)

    def build(self) -> torch.nn.Module:
        if self.family == "vae":
            from ood_core.vae import VAE

            return VAE(self.model_config)
        from ood_core.pixelcnn import PixelCNN

        return PixelCNN(self.model_config)

    def to_dict(self) -> dict:
        d = dataclasses.asdict(self)
        d["train"] = self.train.to_dict()
        return d

    @property
    def name(self) -> str:
        return {"vae": "VAE", "pixelcnn": "PixelCNN"}[self.family]

    @property
    def label(self) -> str:
        knobs = ", ".join(f"{k}={v}" for k, v in self.model.items())
        return f"{self.name} ({knobs}) on {data.spec(self.dataset).title}, seed {self.train.seed}"


@dataclass
class TrainedModel:
    run: GenerativeRun
    model: torch.nn.Module
    history: pd.DataFrame
    meta: dict = field(default_factory=dict)


def _loss(family: str):
    if family == "vae":
        from ood_core.vae import negative_elbo_bpd

        return negative_elbo_bpd
    from ood_core.pixelcnn import nll_bpd

    return nll_bpd


def score_model(model: torch.nn.Module, family: str, x_uint8: torch.Tensor, batch_size: int = 256, seed: int = 0,
                iwae_k: int = 16) -> dict[str, np.ndarray]:
    """Per-example log-likelihood terms (float64 arrays) of ``x_uint8`` under a VAE or PixelCNN.

    Always ``log_px`` (nats; the exact value for a PixelCNN, ``IWAE_k`` for a VAE) and ``bpd``;
    for a VAE also ``elbo``, ``log_px_z``, ``kl``, ``bpd_elbo``, ``bpd_recon`` and ``bpd_kl``
    (so ``bpd_elbo = bpd_recon + bpd_kl``). Deterministic in ``seed`` (a CPU generator drives
    the VAE's sampling); eval mode and ``no_grad``; the training flag is restored.
    """
    if family not in FAMILIES:
        raise ValueError(f"family must be one of {FAMILIES}, got {family!r}")
    device = next(model.parameters()).device
    generator = torch.Generator().manual_seed(seed)
    parts: dict[str, list[np.ndarray]] = {}
    was_training = model.training
    model.eval()
    try:
        with torch.no_grad():
            for start in tqdm(range(0, len(x_uint8), batch_size), desc="scoring", leave=False):
                batch = x_uint8[start:start + batch_size].to(device)
                if family == "pixelcnn":
                    out = {"log_px": model.log_prob(batch)}
                else:
                    out = dict(model.elbo_parts(batch, generator=generator))
                    # ~512 images per decoder pass: larger passes are slower on CPU (measured)
                    out["log_px"] = model.iwae(batch, iwae_k, generator=generator, chunk=max(1, 512 // len(batch)))
                for k, v in out.items():
                    parts.setdefault(k, []).append(v.double().cpu().numpy())
    finally:
        model.train(was_training)
    out = {k: np.concatenate(v) for k, v in parts.items()}
    d = int(np.prod(x_uint8.shape[1:]))
    to_bpd = lambda nats: -nats / (d * _LN2)  # noqa: E731
    out["bpd"] = to_bpd(out["log_px"])
    if family == "vae":
        out["bpd_elbo"], out["bpd_recon"], out["bpd_kl"] = to_bpd(out["elbo"]), to_bpd(out["log_px_z"]), -to_bpd(out["kl"])
    return out


def train_model(run: GenerativeRun, store: ArtifactStore | None = None, device=None,
                progress: bool = True) -> TrainedModel:
    """The trained model and its training curves: from the cache, or trained (resumably) and cached.

    The curves track mean bits/dim (the ELBO's for a VAE: cheap and stochastic-but-seeded; the
    exact one for a PixelCNN) of the ID train/test subsets and the curve sets.
    """
    store = store or ArtifactStore()
    device = torch.device(device or ("cuda" if torch.cuda.is_available() else "cpu"))
    cfg = run.to_dict()
    model = run.build()
    if not store.exists(run.family, cfg):
        train_set = data.load(run.dataset, "train").subset(run.n_train, seed=run.train.seed)
        curves = curve_sets(run)
        term = "bpd_elbo" if run.family == "vae" else "bpd"
        evaluators = {f"bpd: {name}": (lambda m, x=x: float(score_model(
            m, run.family, x, batch_size=run.eval_batch, seed=0, iwae_k=1)[term].mean())) for name, x in curves.items()}
        model.to(device)
        t0 = time.time()
        result = train(model, _loss(run.family), TensorDataset(train_set.x), run.train, store.workdir(run.family, cfg),
                       evaluators=evaluators, device=device, progress=progress and not os.environ.get("TQDM_DISABLE"))
        meta = {"wall_time_s": time.time() - t0, "steps": result.steps, "n_train": len(train_set), "label": run.label}
        if is_main_process():
            store.save(run.family, cfg, state_dict={k: v.cpu() for k, v in model.state_dict().items()}, meta=meta,
                       files={"history.json": json.dumps(result.history)})
        wait_for_main_process()
    model.load_state_dict(store.load_state_dict(run.family, cfg))
    model.to(device).eval()
    history = pd.DataFrame(json.loads(store.read_text(run.family, cfg, "history.json")))
    return TrainedModel(run, model, history, store.load_meta(run.family, cfg))


def score_sets(trained: TrainedModel, sets: dict[str, data.ImageSet], store: ArtifactStore | None = None,
               seed: int = 0) -> dict[str, dict[str, np.ndarray]]:
    """:func:`score_model` of each set, cached per (run, set content, seed)."""
    store = store or ArtifactStore()
    run = trained.run
    out = {}
    for key, s in sets.items():
        cfg = {"run": run.to_dict(), "set": s.name, "content": content_digest(s.x), "seed": seed}
        out[key] = store.cached_arrays(f"{run.family}_scores", cfg, lambda s=s: score_model(
            trained.model, run.family, s.x, batch_size=run.eval_batch, seed=seed, iwae_k=run.iwae_k))
    return out


def bpd_table(run: GenerativeRun, names: dict[str, str], scores: dict[str, dict[str, np.ndarray]]) -> pd.DataFrame:
    """Mean (std) bits/dim per set (and the VAE's ELBO and its two terms); AUROC of log p with
    the ID test set positive -- below 50 % means the set gets *higher* likelihood (the inversion)."""
    rows = []
    id_scores = scores["ID test"]["log_px"]
    for key, name in names.items():
        sc = scores[key]
        row = {"set": name, "n": len(sc["bpd"]), "mean bpd": sc["bpd"].mean(), "std bpd": sc["bpd"].std()}
        if run.family == "vae":
            row.update({"ELBO bpd": sc["bpd_elbo"].mean(), "reconstruction term (bpd)": sc["bpd_recon"].mean(),
                        "KL term (bpd)": sc["bpd_kl"].mean()})
        if key not in ("ID train", "ID test"):
            row[AUROC_COL] = 100 * metrics.auroc(id_scores, sc["log_px"])
        rows.append(row)
    return pd.DataFrame(rows).set_index("set")


class ModelEvaluation(GlowEvaluation):
    """A trained VAE/PixelCNN scored on its evaluation sets: ``GlowEvaluation`` with this family's table."""

    @property
    def table(self) -> pd.DataFrame:
        return bpd_table(self.trained.run, self.names, self.scores)


def evaluate(run: GenerativeRun, n_eval: int | None, ood, seed: int = 0, store: ArtifactStore | None = None,
             device=None) -> ModelEvaluation:
    """Train (or load) ``run`` and score its ID train/test subsets and OOD sets (all cached)."""
    trained = train_model(run, store=store, device=device)
    sets, missing = evaluation_sets(run, n_eval, list(ood), seed=seed)
    return ModelEvaluation(trained, sets, missing, score_sets(trained, sets, store=store, seed=seed))


# ------------------------------------------------------------------------------------- ensembles

def ensemble_table(members: list, names: dict[str, str] | None = None) -> pd.DataFrame:
    """Per set: the members' AUROCs (mean, min, max), the ensemble's log-mean-exp likelihood and WAIC.

    ``members`` are evaluations (Glow, VAE or PixelCNN) of the same sets that differ in the
    training seed. AUROCs (%) treat the ID test set as positive; higher scores = more ID:
    log p for each member, ``log (1/M) sum_m p_m`` for the ensemble, and WAIC
    ``mean_m log p_m - var_m log p_m`` (Choi et al. 2018). Bits/dim columns are means over
    the set. Raises if the members were scored on different images.
    """
    if len(members) < 2:
        raise ValueError(f"an ensemble needs at least 2 members, got {len(members)}")
    first = members[0]
    for m in members[1:]:
        for k, s in first.sets.items():
            if content_digest(m.sets[k].x, 64) != content_digest(s.x, 64):
                raise ValueError(f"members scored different images for {k!r}: use the same n_eval and seed")
    names = names or first.names
    d = int(np.prod(first.sets["ID test"].x.shape[1:]))
    stack = {k: np.stack([m.scores[k]["log_px"] for m in members]) for k in names}  # [M, N]
    combined = {k: {"ensemble log p": gsc.ensemble_log_likelihood(v), "WAIC": gsc.waic(v)} for k, v in stack.items()}
    rows = []
    for key, name in names.items():
        row = {"set": name, "members' mean bpd": float(-stack[key].mean() / (d * _LN2)),
               "ensemble bpd": float(-combined[key]["ensemble log p"].mean() / (d * _LN2))}
        if key not in ("ID train", "ID test"):
            member_auc = [100 * metrics.auroc(stack["ID test"][i], stack[key][i]) for i in range(len(members))]
            row.update({"member AUROC mean": float(np.mean(member_auc)), "member AUROC min": float(np.min(member_auc)),
                        "member AUROC max": float(np.max(member_auc)),
                        "ensemble AUROC": 100 * metrics.auroc(combined["ID test"]["ensemble log p"],
                                                              combined[key]["ensemble log p"]),
                        "WAIC AUROC": 100 * metrics.auroc(combined["ID test"]["WAIC"], combined[key]["WAIC"])})
        rows.append(row)
    return pd.DataFrame(rows).set_index("set")


def ensemble_by_size(members: list, keys: list[str], names: dict[str, str] | None = None) -> pd.DataFrame:
    """AUROC (%) of the ensemble of the first ``m`` members, ``m = 1..M``, per OOD set in ``keys``.

    Two combinations per size: ``log-mean-exp`` (the mixture's likelihood) and ``WAIC``
    (``m = 1``: both are the first member's log p). ID test positive, higher = more ID.
    """
    names = names or members[0].names
    rows = []
    for m in range(1, len(members) + 1):
        stack = {k: np.stack([e.scores[k]["log_px"] for e in members[:m]]) for k in ["ID test", *keys]}
        for how, fn in (("log-mean-exp", gsc.ensemble_log_likelihood), ("WAIC", gsc.waic)):
            id_scores = fn(stack["ID test"])
            for k in keys:
                rows.append({"members": m, "combination": how, "OOD set": names[k],
                             "AUROC": 100 * metrics.auroc(id_scores, fn(stack[k]))})
    return pd.DataFrame(rows)
