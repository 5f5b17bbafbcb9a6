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


# ---------------------------------------------------------------------- 12_ash_ablations: ASH ablation tables
#: Columns of the percentile sweep, local-vs-global and where-to-ASH tables (:mod:`ood_core.classifier_study`).
SHAPER = "shaper"
PERCENTILE = "percentile"
THRESHOLD = "threshold"
#: The two values of the ``THRESHOLD`` column: a per-sample percentile against one from ID training activations.
LOCAL_THRESHOLD = "local (per sample)"
GLOBAL_THRESHOLD = "global (from ID train)"
PRUNED_ON_ID = "pruned on ID test (%)"
STAGE = "stage"
#: The ASH-S anatomy (``classifier_study.ash_s_anatomy``): the median of the exponent s1/s2 and per-set AUROCs.
MEDIAN_RATIO = "median s1/s2"
AUROC_RATIO = "AUROC s1/s2 alone"
AUROC_ENERGY = "AUROC energy"
#: One network's anatomy in a row (``classifier_study.anatomy_summary``).
ID_MEDIAN_RATIO = "ID median s1/s2"
OOD_MEDIAN_RATIO = "OOD median s1/s2"
ASH_S_WINS = "sets where ASH-S beats energy"
#: What ASH-S does to energy, one of ``classifier_study.EFFECTS``.
ASH_S_EFFECT = "ASH-S"


def auroc_pruned(percentile: float) -> str:
    """The anatomy's AUROC column of ASH-P (pruning alone), e.g. ``"AUROC ASH-P@95 (prune)"``."""
    return f"AUROC ASH-P@{percentile:g} (prune)"


def auroc_scaled(percentile: float) -> str:
    """The anatomy's AUROC column of SCALE (scaling alone), e.g. ``"AUROC SCALE@95 (scale)"``."""
    return f"AUROC SCALE@{percentile:g} (scale)"


def auroc_both(percentile: float) -> str:
    """The anatomy's AUROC column of ASH-S (pruning and scaling), e.g. ``"AUROC ASH-S@95 (both)"``."""
    return f"AUROC ASH-S@{percentile:g} (both)"


def mean_auroc_scale(percentile: float) -> str:
    """A network's mean SCALE AUROC over the OOD sets (``anatomy_summary``), e.g. ``"AUROC SCALE@95"``."""
    return f"AUROC SCALE@{percentile:g}"


def mean_auroc_ash_s(percentile: float) -> str:
    """A network's mean ASH-S AUROC over the OOD sets (``anatomy_summary``), e.g. ``"AUROC ASH-S@95"``."""
    return f"AUROC ASH-S@{percentile:g}"
