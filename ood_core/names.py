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


# ---------------------------------------------------------------------- 07_second_order: second-order tables
#: Columns of :func:`ood_core.second_order.second_order_table` and ``curvature_table`` (bits/dim or nats).
SO_MEASURED = "measured"
SO_CLOSED_UNIT = "closed form (σ=1)"
SO_CLOSED_LEARNED = "closed form (learned σ)"
SO_LINEARISED_UNIT = "linearised exact (σ=1)"
SO_LINEARISED_LEARNED = "linearised exact (learned σ)"
SO_EQ5_DIAG = "eq. (5), diag. Σ: 1st + 2nd"
SO_TAYLOR_FULL = "Taylor, full Σ"
SO_HESSIAN_DIAG = "Hessian diagonal (Hutchinson)"
SO_STDERR = "± s.e."
SO_INPUT_CHANNEL = "input channel"
#: Column of :func:`ood_core.second_order.variance_table`: a set's mean per-pixel variance over the ID set's.
SO_VARIANCE_RATIO = "variance ratio to ID"
#: The tables of :mod:`ood_core.second_order_study`: models ("CV-Glow on CIFAR-10"), per-pixel statistics,
#: agreement of a prediction with the measured gap or the network's curvature, the depth study's fit.
SO_MODEL = "model"
SO_PIXEL_MEAN = "per-pixel mean"
SO_PIXEL_VARIANCE = "per-pixel variance"
SO_PREDICTION = "prediction"
SO_PAIRS = "pairs"
SO_SIGN_AGREES = "sign agrees"
SO_MEDIAN_RATIO = "median ratio predicted / measured"
SO_MEDIAN_RATIO_HUTCHINSON = "median ratio to Hutchinson"
SO_ORDERS = "median log10 |ratio| (orders of magnitude)"
SO_CORRELATION = "correlation with Hutchinson"
SO_RATIO = "closed form / linearised exact"
SO_PER_STEP = "mean log factor per step (fit)"
SO_TYPICAL = "typical factor at the largest K"
SO_MEDIAN_BPD = "median bpd"
SO_MAX_BPD = "max bpd"

# ---------------------------------------------------------------------- chapter 15 (what works instead)
#: One direction of a dataset pair, ``"FashionMNIST → MNIST"`` (ID title → OOD title).
PAIR = "pair"
#: The lower of a detector's two directions (mean AUROC %): a remedy has to work both ways.
WORSE_DIRECTION = "worse direction"
#: Share of a coupling layer's masked half its network predicts (Kirichenko et al.), per evaluation set.
MEDIAN_R2 = "median R²"
MEAN_R2 = "mean R²"
#: The batch size M of the typicality test's tables (:func:`ood_core.generative_scores.typicality_auroc_by_batch_size`).
BATCH_SIZE = "batch_size"


def pair_title(id_title: str, ood_title: str) -> str:
    """The :data:`PAIR` of a direction, e.g. ``"FashionMNIST → MNIST"``."""
    return f"{id_title} → {ood_title}"


def std_column(pair: str) -> str:
    """The column of a pair's standard deviation over training seeds, e.g. ``"std FashionMNIST → MNIST"``."""
    return "std " + pair


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
