import os

import pytest
import torch

# Two cores: keep each test process to its own share and make results repeatable.
torch.set_num_threads(max(1, min(2, os.cpu_count() or 1)))


@pytest.fixture
def tmp_artifacts(tmp_path, monkeypatch):
    root = tmp_path / "artifacts"
    monkeypatch.setenv("OOD_ARTIFACTS", str(root))
    return root
