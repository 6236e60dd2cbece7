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


@pytest.fixture
def record_host_reads(monkeypatch):
    """``reads, stop = record_host_reads()``: from then on the names of the tensor-to-host reads (bool, float,
    int, item, tolist) are appended to ``reads`` until ``stop()``; on a GPU each one waits for all queued
    work. Started after the set-up, so only the step under test is counted."""
    def start() -> tuple[list[str], object]:
        reads: list[str] = []
        for method in ("__bool__", "__float__", "__int__", "item", "tolist"):
            original = getattr(torch.Tensor, method)
            monkeypatch.setattr(torch.Tensor, method,
                                lambda tensor, *args, _original=original, _method=method, **kwargs:
                                reads.append(_method) or _original(tensor, *args, **kwargs))
        return reads, monkeypatch.undo
    return start
