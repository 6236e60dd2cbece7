"""DistributedDataParallel on CPU: two torchrun processes train one model and end with identical replicas, with
and without gradient accumulation (which averages across the processes only on the micro-batch that steps)."""
import os
import socket
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest
import torch

REPO = Path(__file__).resolve().parents[1]
WORKER = textwrap.dedent('''
    import os, sys
    import numpy as np
    import torch
    from hsbs_lib.config import Config, apply_overrides
    from hsbs_lib.data.pipeline.cache import CachedSplit
    from hsbs_lib.engine.train import fit

    out = sys.argv[1]
    rng = np.random.default_rng(0)
    labels = rng.integers(0, 7, 64)
    images = (labels[:, None, None, None] * 30 + rng.integers(0, 60, (64, 3, 32, 32))).astype(np.uint8)
    classes = ("surprise", "fear", "disgust", "happiness", "sadness", "anger", "neutral")
    split = CachedSplit(images, labels, None, None, classes, [str(i) for i in range(64)])
    config = apply_overrides(Config(), ["model.name=baseline", "data.input_size=32", "train.batch_size=16",
                                        "train.epochs=1", "train.device=cpu", "train.threads=1",
                                        "train.progress=false", "data.augment=standard", f"out={out}",
                                        f"train.accumulate={sys.argv[2]}"])
    result = fit(config, train_data=split, test_data=split)
    torch.save(result.model.state_dict(), os.path.join(out, f"rank{os.environ['RANK']}.pt"))
''')


def _free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return sock.getsockname()[1]


@pytest.mark.parametrize("accumulate", [1, 2])
def test_two_cpu_replicas_stay_identical(tmp_path, accumulate):
    script = tmp_path / "worker.py"
    script.write_text(WORKER)
    out = tmp_path / "run"     # the run folder holds only what the run writes, not this script
    env = {**os.environ, "OMP_NUM_THREADS": "1", "HSBS_NO_PROGRESS": "1", "GLOO_SOCKET_IFNAME": "lo",
           # the workers import this checkout's hsbs_lib, not whichever one is installed
           "PYTHONPATH": os.pathsep.join(filter(None, [str(REPO), os.environ.get("PYTHONPATH")]))}
    command = [sys.executable, "-m", "torch.distributed.run", "--nproc_per_node=2", "--master_addr=127.0.0.1",
               f"--master_port={_free_port()}", str(script), str(out), str(accumulate)]
    # The timeout only catches a deadlocked process group, however slow the machine.
    finished = subprocess.run(command, env=env, capture_output=True, text=True, timeout=1200)
    assert finished.returncode == 0, finished.stdout[-3000:] + finished.stderr[-3000:]

    replicas = [torch.load(out / f"rank{rank}.pt", weights_only=True) for rank in (0, 1)]
    saved = torch.load(out / "last.pt", weights_only=True)["model"]
    for name, tensor in replicas[0].items():
        assert torch.equal(tensor, replicas[1][name]), name
        assert torch.equal(tensor, saved[name]), name
    # Each rank took half of the 64 samples: 2 batches of 16, not 4; one optimiser step of both with accumulate=2.
    rows = (out / "metrics.csv").read_text().splitlines()
    assert len(rows) == 2 and rows[1].split(",")[:2] == ["1", str(2 // accumulate)]
    assert Path(out / "eval.json").is_file()
