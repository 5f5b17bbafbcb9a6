"""Names that modules and chapters exchange: keys of evaluation sets and the columns of result tables.

Modules talk through these constants, never through display strings typed in two places. A
table's column header is what a reader sees, so it is also the constant's value.

Evaluation sets are keyed ``ID_TRAIN``, ``ID_TEST`` and, for OOD sets, by the name given to
:func:`ood_core.data.ood_sets` (``"mnist"``, ``"cifar10:gray"``, ``"uniform"``, ...); their display
names (``"MNIST test"``) come from the data layer and are looked up through an evaluation's
``names`` mapping.
"""

# ---------------------------------------------------------------------------- evaluation sets
ID_TRAIN = "ID train"
ID_TEST = "ID test"
#: ID training-split images the model did not train on (fits typicality's entropy, DoSE's densities).
ID_HOLDOUT = "ID held-out"
#: ID test images outside the evaluation subset: the validation split that chooses a percentile.
ID_VAL = "ID validation"
ID_KEYS = (ID_TRAIN, ID_TEST, ID_HOLDOUT, ID_VAL)

# ---------------------------------------------------------------------- likelihood tables (bits/dim)
SET = "set"
N = "n"
MEAN_BPD = "mean bpd"
STD_BPD = "std bpd"
PZ_BPD = "log p(z) term (bpd)"
LOGDET_BPD = "log-det term (bpd)"
PAPER_BPD = "paper bpd (Glow)"
ELBO_BPD = "ELBO bpd"
RECON_BPD = "reconstruction term (bpd)"
KL_BPD = "KL term (bpd)"
#: AUROC (%) of the log-likelihood as a score, ID test positive: < 50 means the OOD set is preferred.
AUROC_LOGP = "AUROC % (ID test vs set, score = log p)"
#: Training curves: ``CURVE_PREFIX + set name`` is the mean bits/dim of that set along training.
CURVE_PREFIX = "bpd: "

# ---------------------------------------------------------------------- OOD metric tables (percent)
FPR95 = "FPR95"
AUROC = "AUROC"
AUPR_IN = "AUPR_In"
AUPR_OUT = "AUPR_Out"
METRICS = (FPR95, AUROC, AUPR_IN, AUPR_OUT)
ID_ACCURACY = "ID accuracy (%)"
METHOD = "method"
OOD = "ood"
MEAN_ROW = "mean"
PAPER_FPR95 = "paper FPR95 (DenseNet)"
PAPER_AUROC = "paper AUROC (DenseNet)"
#: How a shaper's percentile was set: the paper's fixed value or chosen on a validation split.
P_CHOSEN_BY = "p chosen by"
P_FIXED = "paper (fixed)"
P_VALIDATION = "validation split"
NETWORK = "network"

# ---------------------------------------------------------------------- unified benchmark tables
DETECTOR = "detector"
FAMILY = "family"
OOD_SET = "OOD set"
AUROC_LOW = "AUROC low"
AUROC_HIGH = "AUROC high"
GENERATIVE = "generative"
CLASSIFIER = "classifier"


def curve_column(set_name: str) -> str:
    """The history column of a set's mean bits/dim along training, e.g. ``"bpd: MNIST test"``."""
    return CURVE_PREFIX + set_name


# ---------------------------------------------------------------------- chapter 11: the ASH benchmark
#: Near/far summaries (:func:`ood_core.classifier_study.near_far_summary`): means over OpenOOD v1.5's
#: near-OOD sets and over the far ones, and OpenOOD's published ResNet-18 AUROCs beside them.
NEAR_FPR95 = "near FPR95"
NEAR_AUROC = "near AUROC"
FAR_FPR95 = "far FPR95"
FAR_AUROC = "far AUROC"
#: ``{split: (FPR95 column, AUROC column)}`` of a near/far summary, for ``split`` "near" or "far".
NEAR_FAR_COLUMNS = {"near": (NEAR_FPR95, NEAR_AUROC), "far": (FAR_FPR95, FAR_AUROC)}
OPENOOD_NEAR_AUROC = "OpenOOD near AUROC (R18)"
OPENOOD_FAR_AUROC = "OpenOOD far AUROC (R18)"
#: Mean AUROC over the synthetic sets (noise, constant images), kept out of the near and far averages.
SYNTHETIC_AUROC = "synthetic AUROC"
#: Our near/far AUROC beside OpenOOD v1.5's, and ours minus theirs (AUROC points).
NEAR_AUROC_OURS = "near AUROC (ours)"
NEAR_AUROC_OPENOOD = "near AUROC (OpenOOD)"
FAR_AUROC_OURS = "far AUROC (ours)"
FAR_AUROC_OPENOOD = "far AUROC (OpenOOD)"
NEAR_DELTA = "near Δ"
FAR_DELTA = "far Δ"
#: ``{split: (ours column, OpenOOD column)}`` of the comparison with OpenOOD v1.5.
OPENOOD_COMPARISON = {"near": (NEAR_AUROC_OURS, NEAR_AUROC_OPENOOD), "far": (FAR_AUROC_OURS, FAR_AUROC_OPENOOD)}
#: The table of classifiers: how each network was trained, how many test images count, the accuracy published.
TRAINED = "trained"
TEST_IMAGES = "test images"
PUBLISHED_ACCURACY = "published accuracy (%)"
