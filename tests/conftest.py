"""Shared test set-up: CPU only, small threads, headless matplotlib, figures into a temp dir."""
import os

os.environ.setdefault("MPLBACKEND", "Agg")
os.environ.setdefault("HSBS_NO_PROGRESS", "1")

import pytest
import torch

torch.set_num_threads(min(2, torch.get_num_threads()))


@pytest.fixture(autouse=True)
def _figures_to_tmp(tmp_path, monkeypatch):
    """Tests never overwrite the committed figures/ folder."""
    monkeypatch.setenv("HSBS_FIGURES", str(tmp_path / "figures"))
    yield
