"""Test-only DDP worker (run by tests/test_ddp.py under ``torch.distributed.run``; not a test module).

Trains a tiny U-Net for a few steps on the given phantoms and writes, per rank, a JSON file with a
hash of the model's parameters (the engine keeps its model local, so the U-Net class is wrapped to
record it). Each rank gets its own output folder so the test can check that only rank 0 wrote files.
"""

from __future__ import annotations

import hashlib
import json
import os
import sys
from pathlib import Path

import torch
import torch.distributed as dist

import napari_lgg_seg.training as training
from napari_lgg_seg.config import TrainConfig

created: list[torch.nn.Module] = []


class RecordingUNet(training.UNet):
    def __init__(self, *args, **kwargs) -> None:
        super().__init__(*args, **kwargs)
        created.append(self)


def param_hash(model: torch.nn.Module) -> str:
    h = hashlib.sha256()
    for name, p in model.named_parameters():
        h.update(name.encode())
        h.update(p.detach().cpu().contiguous().numpy().tobytes())
    return h.hexdigest()


def main() -> None:
    data, out_base, results = sys.argv[1:4]
    rank = int(os.environ["RANK"])
    training.UNet = RecordingUNet
    config = TrainConfig(model_features=[4, 8, 16, 32], model_bottleneck=32, image_size=64, batch_size=2, epochs=2,
                         steps_per_epoch=2, val_fraction=0.34, device="cpu", precision="fp32", num_threads=1,
                         scheduler="plateau", seed=0)
    reports = list(training.train(config, [data], Path(out_base) / f"rank{rank}"))
    model = created[-1]
    torch.manual_seed(config.seed)
    initial = param_hash(training.UNet(training.ModelConfig(features=(4, 8, 16, 32), bottleneck=32)))
    result = {
        "rank": rank,
        "world_size": dist.get_world_size(),
        "params": param_hash(model),
        "initial_params": initial,
        "steps": sum(r["kind"] == "step" for r in reports),
        "epochs": [r["epoch"] for r in reports if r["kind"] == "epoch"],
    }
    Path(results, f"rank{rank}.json").write_text(json.dumps(result))
    dist.barrier()
    dist.destroy_process_group()


if __name__ == "__main__":
    main()
