"""Datasets by name, read from the offline mirror, verified, and the cross-domain views the papers use.

The mirror layout (see ``shared/data/README.md``): one folder per dataset, one ``<split>.npz`` per
split (large splits sharded as ``<split>-00.npz``, ``<split>-01.npz``, ... in original order), each a
zip archive readable by :func:`numpy.load` without pickle, holding ``x`` (uint8, ``N x H x W x C``)
and ``y`` (int64 labels; -1 or a source index for OOD-only sets).

Where the mirror lives: the ``OOD_DATA`` environment variable, else ``../shared/data`` beside the
project checkout. Every file opened is verified against :data:`MANIFEST` (shipped with the package):
first by the sha256 of the file; a file that differs byte-wise (for instance one re-written by
:func:`download_with_torchvision`) is accepted only when the sha256 of its decoded arrays matches.
Datasets whose files were not available when the package was written (SVHN, CIFAR-100, LSUN, ...)
have no manifest hashes; their files are checked against a ``SHA256SUMS`` file in the mirror when
one lists them, and otherwise loaded with a logged warning that they are unverified.

Everything returned to callers is a :class:`ImageSet` of torch tensors: ``x`` uint8
``[N, C, H, W]`` and ``y`` int64 ``[N]``. No view here normalises pixel values: models own their
normalisation, so in- and out-of-distribution data always pass through identical preprocessing.

A dataset with a class-name file (TinyImageNet's ``classes.txt``) is read by :func:`class_table`,
verified like the image files. Named views, ``"<dataset>:<view>"``, live in the :data:`VIEWS` registry:
``"cifar10:gray"`` (Nalisnick et al.'s graying experiment) and ``"tiny_imagenet:cifar10_disjoint"``
(TinyImageNet without the classes inside CIFAR-10's, :data:`TINY_IMAGENET_IN_CIFAR10`, as OpenOOD
v1.5's near-OOD "tin" set for CIFAR-10).
"""

from __future__ import annotations

import dataclasses
import functools
import hashlib
import json
import logging
import os
import re
from collections.abc import Callable
from importlib import resources
from pathlib import Path
from typing import NamedTuple

import numpy as np
import torch
import torch.nn.functional as F

log = logging.getLogger(__name__)

DATA_ENV = "OOD_DATA"


class DatasetError(RuntimeError):
    """A dataset file is missing, corrupt or malformed; the message says how to fix it."""


@dataclasses.dataclass(frozen=True)
class DatasetSpec:
    """What the package knows about a dataset, whether or not its files are present."""

    name: str
    title: str
    shape: tuple[int, int, int]  # (C, H, W) of the stored images
    splits: dict  # split -> list of file names (relative to the dataset folder)
    num_classes: int | None
    role: str  # "in-distribution" (has a training split and labels) or "ood-only"
    torchvision: str | None = None  # torchvision.datasets class for the online path
    partial: bool = False
    note: str = ""
    sha256: dict = dataclasses.field(default_factory=dict)  # file -> sha256 of the file
    content_sha256: dict = dataclasses.field(default_factory=dict)  # file -> sha256 of x,y
    label_counts: dict = dataclasses.field(default_factory=dict)  # split -> list of counts
    class_file: str | None = None  # ``wnid<TAB>words`` per line, line i names label i (see class_table)
    class_file_sha256: str = ""

    @property
    def verifiable(self) -> bool:
        return bool(self.sha256)


def _load_manifest() -> dict[str, DatasetSpec]:
    raw = json.loads(resources.files("ood_core").joinpath("data_manifest.json").read_text())
    specs = {}
    for name, d in raw["datasets"].items():
        d = dict(d)
        d["shape"] = tuple(d["shape"])
        specs[name] = DatasetSpec(name=name, **d)
    return specs


#: Every dataset the package can read, keyed by name.
MANIFEST: dict[str, DatasetSpec] = _load_manifest()


def shared_folder(name: str, env_var: str) -> Path:
    """``$env_var`` if set, else ``shared/<name>`` beside the checkout (or inside it, or beside the working
    directory), the first that exists; the folder beside the checkout when none does."""
    env = os.environ.get(env_var)
    if env:
        return Path(env).expanduser()
    here = Path(__file__).resolve().parent.parent  # the checkout (editable install)
    for candidate in (here.parent / "shared" / name, here / "shared" / name, Path.cwd().parent / "shared" / name):
        if candidate.is_dir():
            return candidate
    return here.parent / "shared" / name


def data_root() -> Path:
    """The mirror folder: ``$OOD_DATA`` if set, else ``../shared/data`` beside the checkout."""
    return shared_folder("data", DATA_ENV)


def root_label(path: Path | str | None = None) -> str:
    """A folder as the book may print it: relative to the checkout when beside it, else ``$OOD_DATA``
    (for the mirror) or the folder's name -- never a machine's absolute path."""
    path = Path(path) if path is not None else data_root()
    here = Path(__file__).resolve().parent.parent
    try:
        return os.path.relpath(path.resolve(), here) if path.resolve().is_relative_to(here.parent) else (
            f"${DATA_ENV}" if path.resolve() == data_root().resolve() else path.name)
    except ValueError:
        return path.name


def spec(name: str) -> DatasetSpec:
    try:
        return MANIFEST[name]
    except KeyError:
        raise DatasetError(f"unknown dataset {name!r}; known: {', '.join(sorted(MANIFEST))}") from None


def available(name: str, split: str | None = None, root: Path | None = None) -> bool:
    """True when every file of ``name`` (or of one split) is present in the mirror (not verified)."""
    s = spec(name)
    root = Path(root) if root is not None else data_root()
    splits = [split] if split else list(s.splits)
    return all(split in s.splits and all((root / name / f).is_file() for f in s.splits[split]) for split in splits)


def _fix_hint(name: str) -> str:
    s = MANIFEST.get(name)
    hint = (f"Point the {DATA_ENV} environment variable at a dataset mirror that has the folder "
            f"'{name}/' (layout: shared/data/README.md)")
    if s is not None and s.torchvision:
        hint += (f", or, with internet access, fetch it with torchvision: "
                 f"`python -m ood_core data download {name} --root <folder>` and set {DATA_ENV}=<folder>")
    return hint + "."


def sha256_file(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as f:
        while block := f.read(chunk):
            h.update(block)
    return h.hexdigest()


def content_sha256(x: np.ndarray, y: np.ndarray) -> str:
    """sha256 over the decoded arrays (shape, dtype and bytes of ``x`` then ``y``)."""
    h = hashlib.sha256()
    for a in (x, y):
        a = np.ascontiguousarray(a)
        h.update(f"{a.dtype.str}{a.shape}".encode())
        h.update(a.tobytes())
    return h.hexdigest()


def _mirror_sums(root: Path) -> dict[str, str]:
    sums = {}
    p = root / "SHA256SUMS"
    if p.is_file():
        for line in p.read_text().splitlines():
            parts = line.split()
            if len(parts) == 2:
                sums[parts[1].lstrip("*")] = parts[0]
    return sums


@functools.lru_cache(maxsize=64)
def _read_file(path_str: str, size: int, mtime: float, name: str, fname: str) -> tuple[np.ndarray, np.ndarray]:
    # size and mtime are part of the cache key so a replaced file is re-read and re-verified.
    path = Path(path_str)
    s = spec(name)
    expected = s.sha256.get(fname)
    file_hash = sha256_file(path)
    cached = _decoded_cache_get(s, fname, file_hash)
    if cached is not None:
        return cached
    try:
        with np.load(path, allow_pickle=False) as d:
            if "x" not in d or "y" not in d:
                raise DatasetError(f"{path} has keys {sorted(d.keys())}, expected 'x' and 'y'. {_fix_hint(name)}")
            x, y = d["x"], d["y"]
    except DatasetError:
        raise
    except Exception as e:  # zip errors, truncated members, pickled arrays
        raise DatasetError(f"cannot read {path} ({type(e).__name__}: {e}); the file is corrupt. {_fix_hint(name)}") from e
    if expected is not None:
        if file_hash != expected and content_sha256(x, y) != s.content_sha256.get(fname):
            raise DatasetError(
                f"{path} is corrupt or not the expected file: sha256 {file_hash} != manifest {expected} "
                f"(and its decoded arrays do not match either). {_fix_hint(name)}")
    else:
        listed = _mirror_sums(path.parent.parent).get(f"{name}/{fname}")
        if listed is not None and listed != file_hash:
            raise DatasetError(f"{path}: sha256 {file_hash} != {listed} listed in the mirror's SHA256SUMS. {_fix_hint(name)}")
        if listed is None:
            log.warning("%s has no known checksum (not in the package manifest nor the mirror's SHA256SUMS); "
                        "loaded unverified", path)
    if x.dtype != np.uint8 or x.ndim != 4:
        raise DatasetError(f"{path}: 'x' must be uint8 N x H x W x C, got {x.dtype} {x.shape}. {_fix_hint(name)}")
    if tuple(x.shape[1:]) != (s.shape[1], s.shape[2], s.shape[0]):
        raise DatasetError(f"{path}: images are {x.shape[1:]}, expected H x W x C = "
                           f"{(s.shape[1], s.shape[2], s.shape[0])}. {_fix_hint(name)}")
    if len(y) != len(x):
        raise DatasetError(f"{path}: {len(x)} images but {len(y)} labels. {_fix_hint(name)}")
    y = y.astype(np.int64)
    if expected is not None and file_hash == expected:
        _decoded_cache_put(s, fname, file_hash, x, y)
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


# LZMA-compressed shards take seconds to decode (CIFAR-10 train: ~8 s); every notebook is a new
# process, so the verified, decoded arrays are kept as plain .npy files in the artifact folder,
# keyed by the file's sha256, and re-verified against the manifest's content hash when read.
def _decoded_dir(file_hash: str) -> Path:
    from ood_core.artifacts import default_root

    return default_root() / "_decoded" / file_hash[:32]


def _decoded_cache_get(s: DatasetSpec, fname: str, file_hash: str):
    if s.sha256.get(fname) != file_hash or fname not in s.content_sha256:
        return None
    folder = _decoded_dir(file_hash)
    try:
        x, y = np.load(folder / "x.npy"), np.load(folder / "y.npy")
    except (OSError, ValueError):
        return None
    if content_sha256(x, y) != s.content_sha256[fname]:
        log.warning("decoded cache %s does not match the manifest; ignoring it", folder)
        return None
    x.setflags(write=False)
    y.setflags(write=False)
    return x, y


def _decoded_cache_put(s: DatasetSpec, fname: str, file_hash: str, x: np.ndarray, y: np.ndarray) -> None:
    import tempfile

    folder = _decoded_dir(file_hash)
    if (folder / "y.npy").is_file():
        return
    tmp = None
    try:
        folder.parent.mkdir(parents=True, exist_ok=True)
        tmp = Path(tempfile.mkdtemp(prefix=".tmp-", dir=folder.parent))
        np.save(tmp / "x.npy", x)
        np.save(tmp / "y.npy", y)
        os.rename(tmp, folder)
    except OSError:  # read-only or full disk, or another process won the race: the cache is optional
        import shutil

        if tmp is not None:
            shutil.rmtree(tmp, ignore_errors=True)


def load_numpy(name: str, split: str, root: Path | None = None) -> tuple[np.ndarray, np.ndarray]:
    """Read and verify one split: ``x`` uint8 ``N x H x W x C`` (read-only) and ``y`` int64."""
    s = spec(name)
    if split not in s.splits:
        raise DatasetError(f"{name} has splits {list(s.splits)}, not {split!r}")
    root = Path(root) if root is not None else data_root()
    xs, ys = [], []
    for fname in s.splits[split]:
        path = root / name / fname
        if not path.is_file():
            raise DatasetError(f"missing dataset file {path}. {_fix_hint(name)}")
        st = path.stat()
        x, y = _read_file(str(path), st.st_size, st.st_mtime, name, fname)
        xs.append(x)
        ys.append(y)
    if len(xs) == 1:
        return xs[0], ys[0]
    return np.concatenate(xs), np.concatenate(ys)


@dataclasses.dataclass
class ImageSet:
    """Images ``x`` (uint8 ``[N, C, H, W]``), labels ``y`` (int64 ``[N]``) and a display name."""

    x: torch.Tensor
    y: torch.Tensor
    name: str
    note: str = ""

    def __len__(self) -> int:
        return len(self.x)

    def __post_init__(self):
        if self.x.dtype != torch.uint8 or self.x.ndim != 4:
            raise TypeError(f"ImageSet.x must be uint8 [N, C, H, W], got {self.x.dtype} {tuple(self.x.shape)}")

    @property
    def shape(self) -> tuple[int, int, int]:
        return tuple(self.x.shape[1:])

    def subset(self, n: int | None, seed: int = 0) -> "ImageSet":
        """``n`` examples drawn without replacement by a seeded permutation (all if ``n`` is None)."""
        if n is None or n >= len(self):
            return self
        idx = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))[:n].sort().values
        return ImageSet(self.x[idx], self.y[idx], self.name, self.note)

    def held_out(self, n: int | None, n_out: int, seed: int = 0) -> "ImageSet":
        """``n_out`` examples that :meth:`subset` ``(n, seed)`` does not draw: the next ``n_out`` of the same
        permutation. A validation split the evaluation subset never sees (``n`` None: no room, an error)."""
        if n is None or n + n_out > len(self):
            raise ValueError(f"{self.name}: {n_out} held-out images need n + n_out <= {len(self)} images "
                             f"(n = {n}); evaluate on fewer images or hold out fewer")
        perm = torch.randperm(len(self), generator=torch.Generator().manual_seed(seed))
        idx = perm[n:n + n_out].sort().values
        return ImageSet(self.x[idx], self.y[idx], f"{self.name} (held out)", self.note)


def load(name: str, split: str = "test", root: Path | None = None) -> ImageSet:
    """A verified split as an :class:`ImageSet` (uint8 ``[N, C, H, W]``)."""
    x, y = load_numpy(name, split, root)
    s = spec(name)
    x = torch.from_numpy(x.transpose(0, 3, 1, 2).copy())  # a writable copy; the cache stays read-only
    return ImageSet(x, torch.from_numpy(y.copy()), f"{s.title} {split}", s.note if s.partial else "")


_WNID_LINE = re.compile(r"^(n\d{8})\t(\S.*)$")


def class_table(name: str, root: Path | None = None) -> list[tuple[str, str]]:
    """The verified class list of a dataset that ships one: ``(wnid, words)`` for label 0, 1, ...

    The file (``classes.txt`` for TinyImageNet) holds one ``wnid<TAB>words`` line per class, line i
    naming label i, wnids in alphabetical order (torchvision ``ImageFolder`` order). It is checked
    against the manifest's sha256, then for its format: ``num_classes`` lines, unique sorted wnids.
    """
    s = spec(name)
    if not s.class_file:
        with_file = ", ".join(sorted(n for n, d in MANIFEST.items() if d.class_file))
        raise DatasetError(f"{name} ships no class-name file; only {with_file} do")
    root = Path(root) if root is not None else data_root()
    path = root / name / s.class_file
    if not path.is_file():
        raise DatasetError(f"missing class-name file {path}. {_fix_hint(name)}")
    st = path.stat()
    return list(_read_class_file(str(path), st.st_size, st.st_mtime, name))


@functools.lru_cache(maxsize=8)
def _read_class_file(path_str: str, size: int, mtime: float, name: str) -> tuple[tuple[str, str], ...]:
    path, s = Path(path_str), spec(name)
    file_hash = sha256_file(path)
    if s.class_file_sha256 and file_hash != s.class_file_sha256:
        raise DatasetError(f"{path} is corrupt or not the expected file: sha256 {file_hash} != manifest "
                           f"{s.class_file_sha256}. {_fix_hint(name)}")
    try:
        lines = path.read_bytes().decode("utf-8").splitlines()
    except UnicodeDecodeError as e:
        raise DatasetError(f"{path} is not UTF-8 text ({e}); the file is corrupt. {_fix_hint(name)}") from e
    rows = []
    for i, line in enumerate(lines, 1):
        m = _WNID_LINE.match(line)
        if not m:
            raise DatasetError(f"{path}, line {i}: expected 'wnid<TAB>words', got {line[:60]!r}. {_fix_hint(name)}")
        rows.append((m.group(1), m.group(2)))
    wnids = [w for w, _ in rows]
    if len(rows) != s.num_classes or wnids != sorted(set(wnids)):
        raise DatasetError(f"{path}: {len(rows)} lines ({len(set(wnids))} distinct wnids"
                           f"{'' if wnids == sorted(wnids) else ', not sorted'}), expected {s.num_classes} "
                           f"sorted distinct wnids. {_fix_hint(name)}")
    return tuple(rows)


def class_names(name: str, root: Path | None = None) -> list[str]:
    """Short class names, label i first: the first synonym of each line of :func:`class_table`."""
    return [words.split(",")[0].strip() for _, words in class_table(name, root)]


# ----------------------------------------------------------------------------------------------
# Views. Each maps uint8 [N, C, H, W] to uint8 [N, C', H', W']; none normalises.
# ----------------------------------------------------------------------------------------------

#: ITU-R BT.601 luma weights (what PIL's ``convert("L")`` and torchvision's ``rgb_to_grayscale`` use).
LUMA = (0.299, 0.587, 0.114)


def to_grayscale(x: torch.Tensor, channels: int = 3) -> torch.Tensor:
    """Luma ``0.299 R + 0.587 G + 0.114 B``, rounded to uint8, repeated to ``channels`` channels.

    The grayscale view of a colour set keeps the colour model's input shape (``channels=3``), as in
    Nalisnick et al.'s graying experiment. A one-channel input is returned repeated.
    """
    _check_uint8(x)
    if x.shape[1] == 1:
        gray = x.float()
    elif x.shape[1] == 3:
        w = torch.tensor(LUMA, dtype=torch.float32).view(1, 3, 1, 1)
        gray = (x.float() * w).sum(1, keepdim=True)
    else:
        raise ValueError(f"to_grayscale expects 1 or 3 channels, got {x.shape[1]}")
    return gray.round().clamp(0, 255).to(torch.uint8).repeat(1, channels, 1, 1)


def to_shape(x: torch.Tensor, shape: tuple[int, int, int], resize: str = "pad") -> torch.Tensor:
    """Bring images to ``shape = (C, H, W)`` for a cross-domain comparison.

    Spatial size: ``resize="pad"`` zero-pads symmetrically (28 -> 32 adds 2 black pixels per side;
    the convention of most Glow code for MNIST-as-CIFAR) or centre-crops when larger;
    ``resize="bilinear"`` resizes (antialiased) instead. Channels: 1 -> 3 repeats the gray channel;
    3 -> 1 takes the luma (:func:`to_grayscale`). Pixel values are never rescaled.
    """
    _check_uint8(x)
    c, h, w = shape
    if x.shape[1] != c:
        if x.shape[1] == 1 and c == 3:
            x = x.repeat(1, 3, 1, 1)
        elif x.shape[1] == 3 and c == 1:
            x = to_grayscale(x, channels=1)
        else:
            raise ValueError(f"cannot map {x.shape[1]} channels to {c}")
    if tuple(x.shape[2:]) != (h, w):
        if resize == "pad":
            dh, dw = h - x.shape[2], w - x.shape[3]
            if dh >= 0 and dw >= 0:
                x = F.pad(x, (dw // 2, dw - dw // 2, dh // 2, dh - dh // 2))
            else:
                top, left = (x.shape[2] - h) // 2, (x.shape[3] - w) // 2
                x = x[:, :, top:top + h, left:left + w]
        elif resize == "bilinear":
            x = F.interpolate(x.float(), size=(h, w), mode="bilinear", antialias=True, align_corners=False)
            x = x.round().clamp(0, 255).to(torch.uint8)
        else:
            raise ValueError(f"resize must be 'pad' or 'bilinear', got {resize!r}")
    return x.contiguous()


def synthetic(kind: str, n: int, shape: tuple[int, int, int], seed: int = 0) -> ImageSet:
    """Synthetic OOD sets, deterministic in ``seed``.

    * ``uniform``: every pixel i.i.d. uniform on {0, ..., 255};
    * ``gaussian``: i.i.d. N(127.5, 64^2) per pixel, rounded and clipped to [0, 255];
    * ``constant``: each image one colour, drawn uniformly per channel.
    """
    g = torch.Generator().manual_seed(seed)
    c, h, w = shape
    if kind == "uniform":
        x = torch.randint(0, 256, (n, c, h, w), generator=g, dtype=torch.int64)
    elif kind == "gaussian":
        x = (127.5 + 64.0 * torch.randn((n, c, h, w), generator=g)).round().clamp(0, 255)
    elif kind == "constant":
        x = torch.randint(0, 256, (n, c, 1, 1), generator=g, dtype=torch.int64).expand(n, c, h, w)
    else:
        raise ValueError(f"synthetic kind must be one of {SYNTHETIC}, got {kind!r}")
    return ImageSet(x.to(torch.uint8).contiguous(), torch.full((n,), -1, dtype=torch.int64), f"{kind} noise" if kind != "constant" else "constant")


SYNTHETIC = ("uniform", "gaussian", "constant")


def _check_uint8(x: torch.Tensor) -> None:
    if not isinstance(x, torch.Tensor) or x.dtype != torch.uint8 or x.ndim != 4:
        raise TypeError("expected a uint8 tensor [N, C, H, W] (use ood_core.data.load(...).x)")


# ----------------------------------------------------------------------------------------------
# Named views "<dataset>:<view>" for ood_sets: a registry, one entry per view.
# ----------------------------------------------------------------------------------------------

#: CIFAR-10's classes in label order.
CIFAR10_CLASSES = ("airplane", "automobile", "bird", "cat", "deer", "dog", "frog", "horse", "ship", "truck")


class ClassOverlap(NamedTuple):
    """A class of another dataset that falls inside a CIFAR-10 class."""

    cifar10_class: str  # one of CIFAR10_CLASSES
    words: str  # the class's line in the dataset's class file


#: The TinyImageNet-200 classes that fall inside a CIFAR-10 class (wnid -> CIFAR-10 class, words):
#: 23 classes, 1,150 of the 10,000 validation images. The view ``"tiny_imagenet:cifar10_disjoint"``
#: drops them, as OpenOOD v1.5 drops the TinyImageNet images overlapping CIFAR-10 from its near-OOD
#: "tin" set (OpenOOD ships its own image list, not reproduced here, so its counts differ from ours).
#:
#: How the line is drawn. CIFAR-10's own definitions: "automobile" is sedans, SUVs and the like;
#: "truck" is big trucks only; neither includes pickup trucks. Where those leave a case open, CIFAR-100
#: -- drawn from the same Tiny Images pool with classes disjoint from CIFAR-10's, and the other
#: near-OOD set for CIFAR-10 -- fixes the boundary: it has its own bus, streetcar, train, tractor,
#: lawn-mower, rocket, lion, leopard, tiger, camel and cattle classes (so these are not CIFAR-10
#: classes), and no bird, frog, dog, domestic-cat or boat class (those belong to CIFAR-10).
#:
#: Kept (not in any CIFAR-10 class), the borderline ones:
#:   * school bus, trolleybus -- buses (CIFAR-100 "bus", "streetcar"), not automobiles or trucks;
#:   * tractor, lawn mower -- CIFAR-100 classes; go-kart -- a small open racing kart, not a car of
#:     the sedan/SUV kind; jinrikisha -- a hand-pulled cart;
#:   * crane -- the lifting machine (WordNet's sense), not a vehicle class, though some are truck-mounted;
#:   * freight car, bullet train -- rail (CIFAR-100 "train"); projectile/missile -- CIFAR-100 "rocket",
#:     not an airplane;
#:   * cougar, lion -- wild cats (CIFAR-100 "lion", "leopard", "tiger"); CIFAR-10 "cat" is the house cat;
#:   * gazelle -- an antelope (a bovid), not a deer; the closest call, kept as a hard near-OOD class;
#:     ox, bison, bighorn, Arabian camel likewise are neither deer nor horses;
#:   * European fire salamander -- an amphibian but not a frog; birdhouse -- an object.
#: Dropped, the borderline ones: police van (a prisoner van, built like a delivery truck: "truck";
#: dropped either way, as automobile or truck); gondola (a boat: CIFAR-10 "ship" is the only class
#: that can hold boats); king penguin (a bird). TinyImageNet has no airplane, deer or horse class.
TINY_IMAGENET_IN_CIFAR10: dict[str, ClassOverlap] = {
    "n01641577": ClassOverlap("frog", "bullfrog, Rana catesbeiana"),
    "n01644900": ClassOverlap("frog", "tailed frog, bell toad, ribbed toad, tailed toad, Ascaphus trui"),
    "n01855672": ClassOverlap("bird", "goose"),
    "n02002724": ClassOverlap("bird", "black stork, Ciconia nigra"),
    "n02056570": ClassOverlap("bird", "king penguin, Aptenodytes patagonica"),
    "n02058221": ClassOverlap("bird", "albatross, mollymawk"),
    "n02085620": ClassOverlap("dog", "Chihuahua"),
    "n02094433": ClassOverlap("dog", "Yorkshire terrier"),
    "n02099601": ClassOverlap("dog", "golden retriever"),
    "n02099712": ClassOverlap("dog", "Labrador retriever"),
    "n02106662": ClassOverlap("dog", "German shepherd, German shepherd dog, German police dog, alsatian"),
    "n02113799": ClassOverlap("dog", "standard poodle"),
    "n02123045": ClassOverlap("cat", "tabby, tabby cat"),
    "n02123394": ClassOverlap("cat", "Persian cat"),
    "n02124075": ClassOverlap("cat", "Egyptian cat"),
    "n02814533": ClassOverlap("automobile", "beach wagon, station wagon, wagon, estate car, beach waggon, "
                                            "station waggon, waggon"),
    "n03100240": ClassOverlap("automobile", "convertible"),
    "n03670208": ClassOverlap("automobile", "limousine, limo"),
    "n04285008": ClassOverlap("automobile", "sports car, sport car"),
    "n03796401": ClassOverlap("truck", "moving van"),
    "n03977966": ClassOverlap("truck", "police van, police wagon, paddy wagon, patrol wagon, wagon, black Maria"),
    "n03447447": ClassOverlap("ship", "gondola"),
    "n03662601": ClassOverlap("ship", "lifeboat"),
}


def overlap_labels(name: str, overlap: dict[str, ClassOverlap], root: Path | None = None) -> list[int]:
    """The labels ``y`` of the classes in ``overlap`` (wnid -> :class:`ClassOverlap`), sorted.

    Each wnid is looked up in the dataset's verified :func:`class_table` and its words must match the
    constant's, so a mirror with another class order or another class list fails loudly.
    """
    index = {wnid: (i, words) for i, (wnid, words) in enumerate(class_table(name, root))}
    labels = []
    for wnid, ov in overlap.items():
        if wnid not in index or index[wnid][1] != ov.words:
            found = index[wnid][1] if wnid in index else "absent"
            raise DatasetError(f"{name}: class {wnid} ({ov.words!r}) does not match the class file "
                               f"({found!r}); the class list differs from the one this package was written for")
        labels.append(index[wnid][0])
    return sorted(labels)


@dataclasses.dataclass(frozen=True)
class View:
    """A named view of a dataset, written ``"<dataset>:<key>"`` in :func:`ood_sets` and :func:`load_view`.

    ``keep(images, dataset, root)`` returns a boolean mask of the rows to keep; it runs on the whole
    split, before the seeded subset. ``pixels(x)`` maps uint8 ``[N, C, H, W]`` images one by one (so it
    commutes with subsetting) and runs after it. The display name gains ``" (label)"``.
    """

    label: str
    pixels: Callable[[torch.Tensor], torch.Tensor] | None = None
    keep: Callable[[ImageSet, str, Path | None], torch.Tensor] | None = None
    datasets: tuple[str, ...] | None = None  # the datasets it applies to; None: any


def _outside_cifar10(images: ImageSet, name: str, root: Path | None) -> torch.Tensor:
    dropped = torch.tensor(overlap_labels(name, TINY_IMAGENET_IN_CIFAR10, root), dtype=torch.int64)
    return ~torch.isin(images.y, dropped)


#: Every view :func:`ood_sets` accepts after a colon.
VIEWS: dict[str, View] = {
    # Nalisnick et al.'s graying experiment: luma, repeated to three channels.
    "gray": View("gray", pixels=to_grayscale),
    # OpenOOD-style near-OOD TinyImageNet for CIFAR-10: TINY_IMAGENET_IN_CIFAR10 removed by label.
    "cifar10_disjoint": View("CIFAR-10 classes removed", keep=_outside_cifar10, datasets=("tiny_imagenet",)),
}


def _parse(name: str) -> tuple[str, View | None]:
    base, sep, key = name.partition(":")
    if base not in SYNTHETIC:
        spec(base)  # an unknown dataset: a clear error
    if not sep:
        return base, None
    if key not in VIEWS:
        raise DatasetError(f"unknown view {key!r} in {name!r}; known views: {', '.join(sorted(VIEWS))}")
    view = VIEWS[key]
    if base in SYNTHETIC or (view.datasets is not None and base not in view.datasets):
        allowed = ", ".join(view.datasets) if view.datasets else "any mirrored dataset"
        raise DatasetError(f"view {key!r} does not apply to {base!r}; it applies to {allowed}")
    return base, view


def _split_for(s: DatasetSpec, split: str) -> str:
    # A single-split set (Textures' "test", TinyImageNet's "val") serves whatever split is asked for.
    return split if split in s.splits else next(iter(s.splits))


def load_view(name: str, split: str = "test", n: int | None = None, seed: int = 0,
              root: Path | None = None, held_out: int | None = None) -> ImageSet:
    """``"<dataset>"`` or ``"<dataset>:<view>"`` (see :data:`VIEWS`), then ``n`` images by :meth:`ImageSet.subset`.

    ``held_out=m`` returns instead ``m`` images the subset never draws (:meth:`ImageSet.held_out`).
    Rows are selected by the view before the seeded subset, pixels mapped after it; the images keep
    their stored shape (:func:`ood_sets` brings them to a model's). A dataset with one split serves
    any ``split`` asked for.
    """
    base, view = _parse(name)
    s = load(base, _split_for(spec(base), split), root)
    if view is not None and view.keep is not None:
        mask = view.keep(s, base, root)
        s = ImageSet(s.x[mask], s.y[mask], s.name, s.note)
    s = s.subset(n, seed) if held_out is None else s.held_out(n, held_out, seed)
    if view is not None:
        x = view.pixels(s.x) if view.pixels is not None else s.x
        s = ImageSet(x, s.y, f"{s.name} ({view.label})", s.note)
    return s


def ood_sets(shape: tuple[int, int, int], names: list[str], n: int | None = None, seed: int = 0,
             split: str = "test", root: Path | None = None) -> tuple[dict[str, ImageSet], dict[str, str]]:
    """The OOD sets named in ``names`` in the model's input ``shape``, and why any were skipped.

    A name is a dataset (``"mnist"``), a synthetic set (``"uniform"``, ``"gaussian"``,
    ``"constant"``) or ``"<dataset>:<view>"`` with a view of :data:`VIEWS` (``"cifar10:gray"``,
    ``"tiny_imagenet:cifar10_disjoint"``). A dataset whose files are absent is skipped, with the reason
    returned, so chapters still run and can say so; an unknown name or view raises.
    """
    parsed = {name: _parse(name) for name in names}  # check every name before reading anything
    sets, missing = {}, {}
    for name, (base, _) in parsed.items():
        if base in SYNTHETIC:
            s = synthetic(base, n or 1000, shape, seed=seed)
        else:
            sp = spec(base)
            if not available(base, _split_for(sp, split), root):
                missing[name] = f"{sp.title}: not in the mirror ({root_label(root)}/{base}/)"
                continue
            s = load_view(name, split, n, seed, root)
        sets[name] = ImageSet(to_shape(s.x, shape), s.y, s.name, s.note)
    return sets, missing


# ----------------------------------------------------------------------------------------------
# Statistics, provenance and the online path.
# ----------------------------------------------------------------------------------------------

def channel_stats(x: torch.Tensor, batch: int = 10000) -> dict[str, np.ndarray]:
    """Per-channel mean and std over all pixels, and the per-pixel variance map, on the [0, 1] scale.

    Returns ``mean [C]``, ``std [C]`` and ``pixel_var [C, H, W]`` (the variance of each pixel
    location across images) -- the data term of Nalisnick et al.'s second-order analysis (their §5).
    """
    _check_uint8(x)
    n = len(x)
    s1 = torch.zeros(x.shape[1:], dtype=torch.float64)
    s2 = torch.zeros(x.shape[1:], dtype=torch.float64)
    for i in range(0, n, batch):
        xb = x[i:i + batch].double() / 255.0
        s1 += xb.sum(0)
        s2 += (xb * xb).sum(0)
    mean_px = s1 / n
    pixel_var = s2 / n - mean_px ** 2
    mean = mean_px.mean((1, 2))
    var = (s2.sum((1, 2)) / (n * x.shape[2] * x.shape[3])) - mean ** 2
    return {"mean": mean.numpy(), "std": var.sqrt().numpy(), "pixel_var": pixel_var.clamp_min(0).numpy()}


def provenance(name: str, root: Path | None = None) -> dict:
    """Source, license and counts of a mirrored dataset, read from its README, plus our checksums."""
    s = spec(name)
    root = Path(root) if root is not None else data_root()
    readme = root / name / "README.md"
    text = readme.read_text() if readme.is_file() else ""
    source_items = _section_items(text, "Source")
    lic = next((item for item in source_items if "license" in item.lower()), "")
    if not lic:  # READMEs that state the license outside the Source section
        lic = next((ln for ln in text.splitlines() if "License" in ln), "")
        lic = re.sub(r"^[-*\s]*", "", lic)
    return {
        "dataset": s.title,
        "splits": ", ".join(f"{k} ({sum(s.label_counts.get(k, [])) or '?'})" for k in s.splits),
        "shape": "x".join(map(str, (s.shape[1], s.shape[2], s.shape[0]))),
        "source": source_items[0] if source_items else "",
        "license": lic,
        "sha256 (first file)": next(iter(s.sha256.values()), "")[:16] + "…" if s.sha256 else "n/a",
        "note": s.note,
    }


def _section_items(text: str, heading: str) -> list[str]:
    """The bullet items of a README section, each with its wrapped continuation lines joined."""
    m = re.search(rf"^## {heading}\s*\n(.*?)(?:\n## |\Z)", text, flags=re.S | re.M)
    if not m:
        return []
    items: list[str] = []
    for ln in m.group(1).splitlines():
        if ln.lstrip().startswith(("- ", "* ")):
            items.append(re.sub(r"^[-*\s]*", "", ln).strip())
        elif items and ln.strip() and ln[:1].isspace():
            items[-1] += " " + ln.strip()
    return items


def verify(root: Path | None = None) -> list[dict]:
    """Check every dataset of the manifest in the mirror; one row per split with its status."""
    rows = []
    for name, s in MANIFEST.items():
        for split in s.splits:
            if not available(name, split, root):
                rows.append({"dataset": name, "split": split, "status": "absent", "n": 0})
                continue
            try:
                x, y = load_numpy(name, split, root)
                status = "ok" if s.verifiable else "unverified (no manifest checksum)"
                counts = s.label_counts.get(split)
                if counts and np.bincount(y[y >= 0], minlength=len(counts)).tolist() != counts:
                    status = "label histogram differs from manifest"
                rows.append({"dataset": name, "split": split, "status": status, "n": len(x)})
            except DatasetError as e:
                rows.append({"dataset": name, "split": split, "status": f"ERROR: {e}", "n": 0})
    return rows


def download_with_torchvision(name: str, root: Path, tmp: Path | None = None) -> list[Path]:
    """Online path: fetch ``name`` with torchvision's downloader and write it in the mirror layout.

    Needs internet. The written ``.npz`` files differ byte-wise from the mirror's (compression), so
    they are verified by the sha256 of their decoded arrays where the manifest has it.
    """
    import torchvision.datasets as tvd

    s = spec(name)
    if not s.torchvision:
        raise DatasetError(f"torchvision has no downloader for {name}; get its files from a mirror")
    cls = getattr(tvd, s.torchvision)
    root = Path(root)
    tmp = Path(tmp) if tmp is not None else root / f".{name}-download"
    out = []
    for split in s.splits:
        kw = {"split": split} if s.torchvision == "SVHN" else {"train": split == "train"}
        ds = cls(str(tmp), download=True, **kw)
        data = ds.data.numpy() if torch.is_tensor(getattr(ds, "data", None)) else np.asarray(ds.data)
        if s.torchvision == "SVHN":  # stored N x C x H x W with digit 0 labelled 10 -> 0
            data = data.transpose(0, 2, 3, 1)
        if data.ndim == 3:
            data = data[..., None]
        labels = np.asarray(getattr(ds, "targets", getattr(ds, "labels", None)), dtype=np.int64)
        if s.torchvision == "SVHN":
            labels = labels % 10
        (root / name).mkdir(parents=True, exist_ok=True)
        files = s.splits[split]
        chunks = np.array_split(np.arange(len(data)), len(files))
        for fname, idx in zip(files, chunks):
            path = root / name / fname
            np.savez_compressed(path, x=data[idx].astype(np.uint8), y=labels[idx])
            out.append(path)
    return out


IMAGE_SUFFIXES = (".png", ".jpg", ".jpeg", ".bmp", ".webp", ".tif", ".tiff")


def images_from_folder(folder: Path | str, shape: tuple[int, int, int] = (3, 32, 32), name: str | None = None,
                       limit: int | None = None) -> ImageSet:
    """Read every image file under ``folder`` (sorted, recursive) into an :class:`ImageSet`.

    The path for a reader's own OOD data. Each image is converted to RGB or L as ``shape[0]``
    asks, resized so its shorter side is ``shape[1]`` (bilinear, antialiased) and centre-cropped to
    ``shape[1:]`` -- the ``Resize + CenterCrop`` test transform the ASH/DICE code applies to the
    CIFAR OOD sets. Pixel values stay uint8; labels are -1.
    """
    from PIL import Image
    import torchvision.transforms.functional as TF

    folder = Path(folder)
    files = sorted(p for p in folder.rglob("*") if p.suffix.lower() in IMAGE_SUFFIXES)
    if not files:
        raise DatasetError(f"no image files ({', '.join(IMAGE_SUFFIXES)}) under {folder}")
    files = files[:limit] if limit else files
    c, h, w = shape
    out = torch.empty((len(files), c, h, w), dtype=torch.uint8)
    for i, f in enumerate(files):
        with Image.open(f) as im:
            t = TF.pil_to_tensor(im.convert("RGB" if c == 3 else "L"))
        t = TF.center_crop(TF.resize(t, min(h, w), antialias=True), [h, w])
        out[i] = t
    return ImageSet(out, torch.full((len(files),), -1, dtype=torch.int64), name or folder.name)


def save_folder(images: ImageSet, folder: Path | str) -> Path:
    """Write an :class:`ImageSet` as numbered PNG files (lossless) -- e.g. to try the folder path."""
    from PIL import Image

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    for i, x in enumerate(images.x):
        arr = x.permute(1, 2, 0).numpy()
        Image.fromarray(arr[..., 0] if arr.shape[2] == 1 else arr).save(folder / f"{i:06d}.png")
    return folder
