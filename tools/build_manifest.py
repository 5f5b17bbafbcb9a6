"""Regenerate ood_core/data_manifest.json from a verified mirror.

Run it only after checking a mirror by other means (its READMEs document how each file was
verified). Datasets whose files are absent keep their entry without checksums.

    python tools/build_manifest.py /path/to/shared/data
"""
import json
import sys
from pathlib import Path

import numpy as np

sys.path.insert(0, str(Path(__file__).resolve().parent.parent))
from ood_core.data import content_sha256, sha256_file  # noqa: E402

FMNIST_CLASSES = "T-shirt/top Trouser Pullover Dress Coat Sandal Shirt Sneaker Bag Ankle-boot"

DATASETS = {
    "fashion_mnist": dict(title="FashionMNIST", shape=[1, 28, 28], num_classes=10, role="in-distribution",
                          splits={"train": ["train.npz"], "test": ["test.npz"]}, torchvision="FashionMNIST"),
    "mnist": dict(title="MNIST", shape=[1, 28, 28], num_classes=10, role="in-distribution",
                  splits={"train": ["train.npz"], "test": ["test.npz"]}, torchvision="MNIST"),
    "cifar10": dict(title="CIFAR-10", shape=[3, 32, 32], num_classes=10, role="in-distribution",
                    splits={"train": [f"train-0{i}.npz" for i in range(5)], "test": ["test.npz"]},
                    torchvision="CIFAR10"),
    "textures": dict(title="Textures (partial: 10 of 47 DTD classes)", shape=[3, 32, 32], num_classes=None,
                     role="ood-only", splits={"test": ["partial_10class.npz"]}, partial=True,
                     note="Partial Textures: 10 of DTD's 47 classes (1,200 of 5,640 images); "
                          "not comparable with published Textures numbers."),
    "svhn": dict(title="SVHN", shape=[3, 32, 32], num_classes=10, role="in-distribution",
                 splits={"train": ["train.npz"], "test": ["test.npz"]}, torchvision="SVHN"),
    "cifar100": dict(title="CIFAR-100", shape=[3, 32, 32], num_classes=100, role="in-distribution",
                     splits={"train": ["train.npz"], "test": ["test.npz"]}, torchvision="CIFAR100"),
    "lsun_crop": dict(title="LSUN-Crop", shape=[3, 32, 32], num_classes=None, role="ood-only",
                      splits={"test": ["test.npz"]}),
    "lsun_resize": dict(title="LSUN-Resize", shape=[3, 32, 32], num_classes=None, role="ood-only",
                        splits={"test": ["test.npz"]}),
    "isun": dict(title="iSUN", shape=[3, 32, 32], num_classes=None, role="ood-only", splits={"test": ["test.npz"]}),
    "places365": dict(title="Places365", shape=[3, 32, 32], num_classes=None, role="ood-only",
                      splits={"test": ["test.npz"]}),
    "tiny_imagenet": dict(title="TinyImageNet", shape=[3, 32, 32], num_classes=200, role="ood-only",
                          splits={"val": ["val.npz"]}, class_file="classes.txt",
                          note="TinyImageNet-200 validation split (200 classes x 50 images), downsampled "
                               "64x64 -> 32x32 by exact 2x2 box averaging of the decoded JPEG originals; not "
                               "bit-identical to published 32x32 TinyImageNet OOD files (their resize filters "
                               "differ)."),
}


def main(root: Path) -> None:
    out = {"about": __doc__.strip().splitlines()[0], "datasets": {}}
    for name, d in DATASETS.items():
        d = dict(d, sha256={}, content_sha256={}, label_counts={})
        folder = root / name
        for split, files in d["splits"].items():
            if not all((folder / f).is_file() for f in files):
                continue
            ys = []
            for f in files:
                with np.load(folder / f, allow_pickle=False) as z:
                    x, y = z["x"], z["y"]
                d["sha256"][f] = sha256_file(folder / f)
                d["content_sha256"][f] = content_sha256(x, y.astype(np.int64))
                ys.append(y)
            y = np.concatenate(ys)
            if d["num_classes"]:
                d["label_counts"][split] = np.bincount(y, minlength=d["num_classes"]).tolist()
        if d.get("class_file") and (folder / d["class_file"]).is_file():
            d["class_file_sha256"] = sha256_file(folder / d["class_file"])
        out["datasets"][name] = d
    target = Path(__file__).resolve().parent.parent / "ood_core" / "data_manifest.json"
    target.write_text(json.dumps(out, indent=1) + "\n")
    print(f"wrote {target}")


if __name__ == "__main__":
    main(Path(sys.argv[1]))
