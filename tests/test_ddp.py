"""DistributedDataParallel on CPU (gloo): 2 processes under torch.distributed.run, a few steps on phantoms."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import pytest
import torch.distributed as dist

pytestmark = pytest.mark.skipif(not dist.is_available() or not dist.is_gloo_available(),
                                reason="torch.distributed with gloo is not available")

WORKER = Path(__file__).with_name("_ddp_worker.py")


def test_two_cpu_ranks_end_with_identical_weights(phantom_root, tmp_path):
    out, results = tmp_path / "runs", tmp_path / "results"
    results.mkdir()
    env = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONUNBUFFERED": "1"}
    env.pop("WORLD_SIZE", None)
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node", "2", str(WORKER),
           str(phantom_root), str(out), str(results)]
    proc = subprocess.run(cmd, env=env, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stdout[-3000:] + proc.stderr[-3000:]
    ranks = [json.loads((results / f"rank{r}.json").read_text()) for r in (0, 1)]
    assert [r["world_size"] for r in ranks] == [2, 2]
    assert ranks[0]["steps"] == ranks[1]["steps"] == 4 and ranks[0]["epochs"] == ranks[1]["epochs"] == [1, 2]
    # gradients are averaged across ranks, so the replicas stay identical although each saw other slices
    assert ranks[0]["params"] == ranks[1]["params"]
    assert ranks[0]["params"] != ranks[0]["initial_params"]  # and they did train
    # only rank 0 writes the run's files
    rank0 = out / "rank0"
    for name in ("best.pt", "last.pt", "metrics.csv", "split.json", "config.json"):
        assert (rank0 / name).is_file(), name
    assert not (out / "rank1").exists() or not any((out / "rank1").iterdir())
    from napari_lgg_seg.model import read_checkpoint

    assert read_checkpoint(rank0 / "last.pt")["meta"]["world_size"] == 2
