"""The data layer against the mirror: shapes, dtypes, label histograms, checksums, views."""

import dataclasses
import re
import shutil
from pathlib import Path

import numpy as np
import pytest
import torch

from ood_core import data

ROOT = data.data_root()
needs_mirror = pytest.mark.skipif(not data.available("mnist", "test"), reason="dataset mirror not found")


def _readme_histogram(name: str, split: str) -> list[int] | None:
    """Parse '- test: 0: 980, 1: 1135, ...' from the mirror README (independent of our manifest)."""
    text = (ROOT / name / "README.md").read_text()
    m = re.search(rf"^- {split}: ((?:\d+: [\d,]+(?:, )?)+)$", text, flags=re.M)
    if not m:
        return None
    return [int(v.replace(",", "")) for _, v in re.findall(r"(\d+): ([\d,]+?)(?=, \d+:|$)", m.group(1))]


@needs_mirror
@pytest.mark.parametrize("name,split,n,shape", [
    ("mnist", "test", 10000, (1, 28, 28)),
    ("fashion_mnist", "test", 10000, (1, 28, 28)),
    ("cifar10", "test", 10000, (3, 32, 32)),
    ("textures", "test", 1200, (3, 32, 32)),
])
def test_load_shapes_and_dtypes(name, split, n, shape):
    s = data.load(name, split)
    assert s.x.dtype == torch.uint8 and s.y.dtype == torch.int64
    assert tuple(s.x.shape) == (n, *shape) and len(s.y) == n


@needs_mirror
@pytest.mark.parametrize("name", ["mnist", "fashion_mnist"])
@pytest.mark.parametrize("split", ["train", "test"])
def test_label_histograms_match_mirror_readme(name, split):
    expected = _readme_histogram(name, split)
    assert expected is not None and len(expected) == 10
    _, y = data.load_numpy(name, split)
    assert np.bincount(y, minlength=10).tolist() == expected == data.spec(name).label_counts[split]


@needs_mirror
def test_cifar10_train_is_the_five_shards_in_order_with_readme_statistics():
    s = data.load("cifar10", "train")
    assert len(s) == 50000
    assert s.y[:10].tolist() == [6, 9, 9, 4, 1, 1, 2, 7, 8, 3]  # README: first train labels
    assert np.bincount(s.y.numpy()).tolist() == [5000] * 10
    st = data.channel_stats(s.x)
    np.testing.assert_allclose(st["mean"], [0.4914, 0.4822, 0.4465], atol=1e-4)
    np.testing.assert_allclose(st["std"], [0.2470, 0.2435, 0.2616], atol=1e-4)


def _fake_mirror(tmp_path: Path, name: str = "svhn", n: int = 12, shape=(32, 32, 3)) -> Path:
    root = tmp_path / "mirror"
    (root / name).mkdir(parents=True)
    rng = np.random.default_rng(0)
    for split in data.spec(name).splits:
        np.savez_compressed(root / name / f"{split}.npz", x=rng.integers(0, 256, (n, *shape), dtype=np.uint8),
                            y=rng.integers(0, 10, n).astype(np.int64))
    return root


def test_fake_svhn_in_mirror_layout_loads_and_is_checked_against_mirror_sums(tmp_path, caplog):
    root = _fake_mirror(tmp_path)
    assert data.available("svhn", "test", root)
    s = data.load("svhn", "test", root)  # no checksum known anywhere: loads with a warning
    assert tuple(s.x.shape) == (12, 3, 32, 32)
    assert "unverified" in caplog.text
    (root / "SHA256SUMS").write_text(f"{'0' * 64}  svhn/train.npz\n")
    with pytest.raises(data.DatasetError, match="SHA256SUMS"):
        data.load("svhn", "train", root)


def test_fake_svhn_used_as_ood_set_and_absence_reported(tmp_path):
    root = _fake_mirror(tmp_path)
    sets, missing = data.ood_sets((3, 32, 32), ["svhn", "cifar100", "uniform"], n=5, root=root)
    assert set(sets) == {"svhn", "uniform"} and "cifar100" in missing
    assert tuple(sets["svhn"].x.shape) == (5, 3, 32, 32)


def test_missing_file_error_says_how_to_fix(tmp_path):
    with pytest.raises(data.DatasetError, match=r"missing dataset file .*mnist.*OOD_DATA.*torchvision"):
        data.load("mnist", "test", tmp_path)


@needs_mirror
def test_corrupt_file_is_rejected_with_file_name(tmp_path):
    root = tmp_path / "mirror"
    (root / "mnist").mkdir(parents=True)
    x, y = data.load_numpy("mnist", "test")
    x = x.copy()
    x[0, 0, 0, 0] ^= 1  # one flipped bit in one pixel
    np.savez_compressed(root / "mnist" / "test.npz", x=x, y=y)
    with pytest.raises(data.DatasetError, match=r"test\.npz is corrupt"):
        data.load("mnist", "test", root)
    (root / "mnist" / "test.npz").write_bytes(b"not a zip file")
    with pytest.raises(data.DatasetError, match="corrupt"):
        data.load("mnist", "test", root)


@needs_mirror
def test_recompressed_file_is_accepted_by_content_hash(tmp_path):
    """What download_with_torchvision writes differs byte-wise from the mirror but holds the same arrays."""
    root = tmp_path / "mirror"
    (root / "mnist").mkdir(parents=True)
    x, y = data.load_numpy("mnist", "test")
    np.savez(root / "mnist" / "test.npz", x=x, y=y)  # uncompressed: other bytes, same content
    assert data.sha256_file(root / "mnist" / "test.npz") != data.spec("mnist").sha256["test.npz"]
    assert torch.equal(data.load("mnist", "test", root).x, data.load("mnist", "test").x)


def test_manifest_agrees_with_mirror_sha256sums():
    sums = ROOT / "SHA256SUMS"
    if not sums.is_file():
        pytest.skip("no mirror")
    listed = dict(reversed(line.split()) for line in sums.read_text().splitlines() if line.strip())
    for name, s in data.MANIFEST.items():
        for fname, h in s.sha256.items():
            assert listed[f"{name}/{fname}"] == h


def test_to_shape_pad_and_channels():
    x = torch.arange(2 * 28 * 28).reshape(2, 1, 28, 28).remainder(256).to(torch.uint8)
    y = data.to_shape(x, (3, 32, 32))
    assert tuple(y.shape) == (2, 3, 32, 32) and y.dtype == torch.uint8
    assert torch.equal(y[:, 0, 2:30, 2:30], x[:, 0]) and torch.equal(y[:, 0], y[:, 2])
    assert y[:, :, :2].sum() == 0 and y[:, :, :, 30:].sum() == 0  # zero padding
    z = data.to_shape(x, (1, 32, 32), resize="bilinear")
    assert tuple(z.shape) == (2, 1, 32, 32)
    back = data.to_shape(y, (1, 28, 28))  # crop + luma of equal channels is the identity
    assert torch.equal(back, x)


def test_grayscale_luma_and_input_untouched():
    x = torch.tensor([[[[255]], [[0]], [[0]]], [[[0]], [[255]], [[0]]], [[[10]], [[10]], [[10]]]], dtype=torch.uint8)
    before = x.clone()
    g = data.to_grayscale(x)
    assert torch.equal(x, before)
    assert g[:, 0, 0, 0].tolist() == [round(0.299 * 255), round(0.587 * 255), 10]
    assert torch.equal(g[:, 0], g[:, 1]) and torch.equal(g[:, 1], g[:, 2])


@pytest.mark.parametrize("kind", data.SYNTHETIC)
def test_synthetic_sets_deterministic(kind):
    a = data.synthetic(kind, 6, (3, 8, 8), seed=1)
    b = data.synthetic(kind, 6, (3, 8, 8), seed=1)
    c = data.synthetic(kind, 6, (3, 8, 8), seed=2)
    assert torch.equal(a.x, b.x) and not torch.equal(a.x, c.x)
    assert a.x.dtype == torch.uint8 and tuple(a.x.shape) == (6, 3, 8, 8)
    if kind == "constant":
        assert (a.x == a.x[:, :, :1, :1]).all()


def test_channel_stats_closed_form():
    x = torch.zeros(4, 1, 2, 2, dtype=torch.uint8)
    x[:2] = 255  # half the images white, half black: mean 0.5, std 0.5, per-pixel var 0.25
    s = data.channel_stats(x)
    np.testing.assert_allclose(s["mean"], [0.5])
    np.testing.assert_allclose(s["std"], [0.5])
    np.testing.assert_allclose(s["pixel_var"], np.full((1, 2, 2), 0.25))


def test_subset_is_seeded_and_sorted():
    s = data.synthetic("uniform", 50, (1, 2, 2))
    a, b = s.subset(10, seed=3), s.subset(10, seed=3)
    assert torch.equal(a.x, b.x) and len(a) == 10


@needs_mirror
def test_decoded_cache_is_reused_and_a_tampered_cache_ignored(tmp_path, monkeypatch):
    monkeypatch.setenv("OOD_ARTIFACTS", str(tmp_path))
    data._read_file.cache_clear()
    x1, y1 = data.load_numpy("mnist", "test")
    cached = list((tmp_path / "_decoded").glob("*/x.npy"))
    assert len(cached) == 1
    bad = np.load(cached[0]).copy()
    bad[0, 0, 0, 0] ^= 1
    np.save(cached[0], bad)
    data._read_file.cache_clear()
    x2, _ = data.load_numpy("mnist", "test")  # the tampered cache fails its content hash: re-decoded
    assert np.array_equal(x1, x2)
    data._read_file.cache_clear()


# ----------------------------------------------------------------------------------------------
# TinyImageNet-200 validation split, its class file and the CIFAR-10-disjoint view.
# ----------------------------------------------------------------------------------------------

needs_tin = pytest.mark.skipif(not data.available("tiny_imagenet", "val"), reason="TinyImageNet not in the mirror")
TIN_DISJOINT = "tiny_imagenet:cifar10_disjoint"


def _tin_readme_sha256() -> dict[str, str]:
    """The sha256 column of the mirror README's Contents table (independent of our manifest)."""
    text = (ROOT / "tiny_imagenet" / "README.md").read_text()
    return dict(re.findall(r"^\| (\S+) \|.*\| ([0-9a-f]{64}) \|$", text, flags=re.M))


def _tin_dropped_labels() -> list[int]:
    """Labels of the constant's wnids, found by reading classes.txt directly (not through data.py)."""
    lines = (ROOT / "tiny_imagenet" / "classes.txt").read_text().splitlines()
    wnids = [ln.split("\t")[0] for ln in lines]
    return sorted(wnids.index(w) for w in data.TINY_IMAGENET_IN_CIFAR10)


@needs_tin
def test_tiny_imagenet_verifies_against_manifest_and_mirror_readme():
    s = data.spec("tiny_imagenet")
    readme = _tin_readme_sha256()
    assert data.sha256_file(ROOT / "tiny_imagenet" / "val.npz") == s.sha256["val.npz"] == readme["val.npz"]
    assert data.sha256_file(ROOT / "tiny_imagenet" / "classes.txt") == s.class_file_sha256 == readme["classes.txt"]
    x, y = data.load_numpy("tiny_imagenet", "val")
    assert x.dtype == np.uint8 and x.shape == (10000, 32, 32, 3) and y.dtype == np.int64
    assert data.content_sha256(x, y) == s.content_sha256["val.npz"]
    assert np.bincount(y, minlength=200).tolist() == [50] * 200 == s.label_counts["val"]
    assert {r["split"]: r["status"] for r in data.verify() if r["dataset"] == "tiny_imagenet"} == {"val": "ok"}
    st = data.channel_stats(data.load("tiny_imagenet", "val").x)  # README: per-channel mean / std
    np.testing.assert_allclose(st["mean"], [0.4829, 0.4500, 0.3986], atol=1e-4)
    np.testing.assert_allclose(st["std"], [0.2620, 0.2541, 0.2687], atol=1e-4)


@needs_tin
def test_tiny_imagenet_class_table_and_label_order():
    table = data.class_table("tiny_imagenet")
    wnids = [w for w, _ in table]
    assert len(table) == 200 and wnids == sorted(set(wnids))
    assert data.class_names("tiny_imagenet")[:3] == ["goldfish", "European fire salamander", "bullfrog"]
    _, y = data.load_numpy("tiny_imagenet", "val")
    assert wnids[y[0]] == "n03444034"  # README: val_0.JPEG is n03444034 (go-kart) in val_annotations.txt
    assert data.class_names("tiny_imagenet")[y[0]] == "go-kart"


@needs_tin
def test_cifar10_overlap_constant_matches_class_file_and_readme():
    table = dict(data.class_table("tiny_imagenet"))
    ov = data.TINY_IMAGENET_IN_CIFAR10
    assert len(ov) == 23
    assert all(o.cifar10_class in data.CIFAR10_CLASSES for o in ov.values())
    assert all(table[w] == o.words for w, o in ov.items())
    # every class the mirror README names as falling inside CIFAR-10 is in the constant
    text = (ROOT / "tiny_imagenet" / "README.md").read_text()
    section = re.search(r"^## Class overlap with CIFAR-10\n(.*?)\n## ", text, flags=re.S | re.M).group(1)
    named = set(re.findall(r"`([^`]+)`", section)) - {"y"}
    assert named <= {o.words.split(",")[0] for o in ov.values()}
    assert data.overlap_labels("tiny_imagenet", ov) == _tin_dropped_labels()


@needs_tin
def test_cifar10_disjoint_view_drops_exactly_the_listed_classes():
    full = data.load("tiny_imagenet", "val")
    view = data.load_view(TIN_DISJOINT)
    dropped = _tin_dropped_labels()
    assert len(view) == 10000 - 50 * len(dropped) == 8850
    counts = np.bincount(view.y.numpy(), minlength=200)
    assert counts[dropped].tolist() == [0] * 23
    assert np.delete(counts, dropped).tolist() == [50] * 177
    keep = ~np.isin(full.y.numpy(), dropped)  # the view is the full set's rows outside those classes, in order
    assert torch.equal(view.x, full.x[torch.from_numpy(keep)]) and torch.equal(view.y, full.y[torch.from_numpy(keep)])
    assert view.name == "TinyImageNet val (CIFAR-10 classes removed)"


@needs_tin
def test_cifar10_disjoint_ood_set_is_seeded_and_drawn_from_the_view():
    a, _ = data.ood_sets((3, 32, 32), [TIN_DISJOINT], n=100, seed=0)
    b, _ = data.ood_sets((3, 32, 32), [TIN_DISJOINT], n=100, seed=0)
    c, _ = data.ood_sets((3, 32, 32), [TIN_DISJOINT], n=100, seed=1)
    a, b, c = a[TIN_DISJOINT], b[TIN_DISJOINT], c[TIN_DISJOINT]
    assert tuple(a.x.shape) == (100, 3, 32, 32) and a.x.dtype == torch.uint8
    assert torch.equal(a.x, b.x) and torch.equal(a.y, b.y) and not torch.equal(a.x, c.x)
    assert not np.isin(a.y.numpy(), _tin_dropped_labels()).any()
    full = data.load("tiny_imagenet", "val")  # every image is one of the full set's, with its label
    rows = {bytes(img.numpy()): int(lab) for img, lab in zip(full.x, full.y)}
    assert all(rows.get(bytes(img.numpy())) == int(lab) for img, lab in zip(a.x, a.y))
    # "test" is served by the only split, "val"; the whole set (n=None) is the 8,850 images
    whole, _ = data.ood_sets((3, 32, 32), [TIN_DISJOINT, "tiny_imagenet"], split="test")
    assert len(whole[TIN_DISJOINT]) == 8850 and len(whole["tiny_imagenet"]) == 10000


@needs_mirror
def test_gray_view_is_the_luma_of_the_seeded_subset():
    sets, _ = data.ood_sets((3, 32, 32), ["cifar10:gray"], n=50, seed=3)
    expected = data.to_grayscale(data.load("cifar10", "test").subset(50, seed=3).x)
    assert torch.equal(sets["cifar10:gray"].x, expected)
    assert sets["cifar10:gray"].name == "CIFAR-10 test (gray)"


def test_unknown_or_misapplied_view_raises_before_reading():
    with pytest.raises(data.DatasetError, match="unknown view 'grey'.*cifar10_disjoint, gray"):
        data.ood_sets((3, 32, 32), ["uniform", "cifar10:grey"])
    with pytest.raises(data.DatasetError, match="does not apply to 'cifar10'.*tiny_imagenet"):
        data.ood_sets((3, 32, 32), ["cifar10:cifar10_disjoint"])
    with pytest.raises(data.DatasetError, match="unknown dataset 'tinyimagenet'"):
        data.ood_sets((3, 32, 32), ["tinyimagenet:gray"])


def test_absent_tiny_imagenet_is_reported_not_raised(tmp_path):
    sets, missing = data.ood_sets((3, 32, 32), [TIN_DISJOINT, "uniform"], n=4, root=tmp_path)
    assert set(sets) == {"uniform"} and "TinyImageNet: not in the mirror" in missing[TIN_DISJOINT]
    with pytest.raises(data.DatasetError, match=r"missing class-name file .*classes\.txt"):
        data.class_table("tiny_imagenet", tmp_path)
    with pytest.raises(data.DatasetError, match="ships no class-name file"):
        data.class_table("cifar10")


def _tin_copy(tmp_path: Path) -> Path:
    root = tmp_path / "mirror"
    (root / "tiny_imagenet").mkdir(parents=True)
    for f in ("val.npz", "classes.txt"):
        shutil.copy(ROOT / "tiny_imagenet" / f, root / "tiny_imagenet" / f)
    return root


@needs_tin
def test_corrupt_tiny_imagenet_images_are_rejected(tmp_path):
    root = _tin_copy(tmp_path)
    x, y = data.load_numpy("tiny_imagenet", "val")
    x = x.copy()
    x[1234, 5, 6, 2] ^= 1  # one flipped bit
    np.savez(root / "tiny_imagenet" / "val.npz", x=x, y=y)
    with pytest.raises(data.DatasetError, match=r"val\.npz is corrupt"):
        data.ood_sets((3, 32, 32), [TIN_DISJOINT], n=10, root=root)


@needs_tin
def test_corrupt_or_malformed_class_file_is_rejected(tmp_path, monkeypatch):
    root = _tin_copy(tmp_path)
    path = root / "tiny_imagenet" / "classes.txt"
    lines = path.read_text().splitlines(keepends=True)
    path.write_text("".join(lines).replace("\tgondola\n", "\tgondola, Venetian boat\n"))
    with pytest.raises(data.DatasetError, match=r"classes\.txt is corrupt"):
        data.load_view(TIN_DISJOINT, root=root)
    # without the manifest hash, the format checks and the constant's words still catch it
    monkeypatch.setitem(data.MANIFEST, "tiny_imagenet",
                        dataclasses.replace(data.spec("tiny_imagenet"), class_file_sha256=""))
    with pytest.raises(data.DatasetError, match="n03447447 .*does not match the class file"):
        data.load_view(TIN_DISJOINT, root=root)
    path.write_text("".join(lines[:-1]))
    with pytest.raises(data.DatasetError, match="199 lines"):
        data.class_table("tiny_imagenet", root)
    path.write_text("".join(lines).replace("n01443537\t", "n01443537 "))
    with pytest.raises(data.DatasetError, match=r"line 1: expected 'wnid<TAB>words'"):
        data.class_table("tiny_imagenet", root)
    path.write_text("".join([lines[1], lines[0], *lines[2:]]))
    with pytest.raises(data.DatasetError, match="not sorted"):
        data.class_table("tiny_imagenet", root)
