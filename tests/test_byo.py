"""The bring-your-own path: a folder of images and a classifier of the reader's, every detector."""

import torch

from ood_core import classifier_study as cs, data
from ood_core.classifiers import ClassifierConfig, build_classifier
from ood_core.profiles import ASH_METHODS


def test_folder_round_trip_and_resize(tmp_path):
    s = data.synthetic("uniform", 5, (3, 32, 32), seed=0)
    data.save_folder(s, tmp_path / "mine")
    back = data.images_from_folder(tmp_path / "mine")
    assert torch.equal(back.x, s.x)  # PNG is lossless and 32x32 needs no resize
    small = data.images_from_folder(tmp_path / "mine", shape=(1, 16, 16))
    assert tuple(small.x.shape) == (5, 1, 16, 16) and small.x.dtype == torch.uint8


def test_own_model_and_folder_get_the_full_table(tmp_path):
    torch.manual_seed(0)
    model = build_classifier(ClassifierConfig("resnet18_cifar", width=4))
    data.save_folder(data.synthetic("constant", 12, (3, 32, 32), seed=1), tmp_path / "ood")
    ev = cs.evaluate_model(model, data.synthetic("gaussian", 32, (3, 32, 32), seed=2),
                           data.synthetic("gaussian", 16, (3, 32, 32), seed=3),
                           {"mine": data.images_from_folder(tmp_path / "ood")})
    table = cs.summary(ev.benchmark(ASH_METHODS))
    assert len(table) == len(ASH_METHODS)
    assert table[["FPR95", "AUROC"]].notna().all().all()
