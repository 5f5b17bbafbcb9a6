"""The data layer against the mirror: shapes, dtypes, label histograms, checksums, views."""

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
