"""Training-step benchmark: a naive fp32 NCHW step against the product's training path.

NAIVE: eager fp32, NCHW model and input, whole 256x256 slices.
PRODUCT: what ``training.train`` does: ``training.training_memory_format`` (NCHW for fp32 on CPU, channels_last
with bf16 or CUDA), ``inference.autocast_context``
(bf16 where the CPU is fast at it), whole slices; with ``--crop-size C`` also the product on C x C
crops (the shipped config trains on 128 x 128 crops).
All use the same loss (``losses.make_loss("weighted_bce_dice")``), Adam, and the real in-memory
data pipeline (``data.SliceStore`` -> ``training._make_batch`` -> ``transforms.normalize`` ->
``transforms.augment_batch``) on a few real patients, or phantoms when the data is absent.
Steps alternate between the variants. Prints slices/s and the share of each step spent waiting
for data.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python benchmarks/training.py
    python benchmarks/training.py --steps 2 --warmup 1 --patients 2 --max-slices 8   # smoke run
"""

from __future__ import annotations

import argparse
import contextlib
import copy
import time
from pathlib import Path

import numpy as np
import torch

from _common import (
    add_common_args,
    apply_threads,
    folders_by_size,
    machine_facts,
    max_rss_mib,
    median,
    phantom_cases,
    pick_spread,
    print_machine_facts,
    print_table,
    real_data_available,
    write_json,
)
from napari_lgg_seg import inference, training
from napari_lgg_seg.config import TrainConfig
from napari_lgg_seg.data import SliceStore, resize_pair
from napari_lgg_seg.losses import make_loss
from napari_lgg_seg.model import ModelConfig, UNet
from napari_lgg_seg.transforms import augment_batch, normalize, volume_channel_stats


def build_store(args: argparse.Namespace) -> tuple[SliceStore, str]:
    """A SliceStore of a few real patients (spread over sizes), or of phantoms."""
    if real_data_available(args.data, args.phantom):
        chosen = pick_spread(folders_by_size(args.data), max(args.patients - 2, 0))[: max(args.patients, 1)]
        folders = {f.name: f for _, f in chosen}
        store = SliceStore.load(folders, list(folders))
        if args.max_slices:
            store = _cap_store(store, args.max_slices)
        return store, f"{len(folders)} real patients from {args.data}"
    cases = phantom_cases(max(args.patients, 1), args.max_slices, args.phantom_size)
    images = np.concatenate([c.images for c in cases])
    masks = np.concatenate([c.masks for c in cases])
    stats = np.concatenate([np.repeat(volume_channel_stats(c.images)[None], c.num_slices, 0) for c in cases])
    owner = np.concatenate([np.full(c.num_slices, i) for i, c in enumerate(cases)])
    offsets, n = [], 0
    for c in cases:
        offsets.append((n, n + c.num_slices))
        n += c.num_slices
    why = "forced by --phantom" if args.phantom else f"{args.data} not found"
    return SliceStore([c.patient_id for c in cases], images, masks, stats, owner, offsets), \
        f"{len(cases)} synthetic phantoms ({why})"


def _cap_store(store: SliceStore, max_slices: int) -> SliceStore:
    keep, offsets, n = [], [], 0
    for start, stop in store.offsets:
        count = min(stop - start, max_slices)
        first = start + (stop - start - count) // 2
        keep.append(np.arange(first, first + count))
        offsets.append((n, n + count))
        n += count
    idx = np.concatenate(keep)
    return SliceStore(store.patient_ids, store.images[idx], store.masks[idx], store.stats[idx],
                      store.patient_of_slice[idx], offsets)


class Variant:
    """A model + optimiser + the settings of one way of training."""

    def __init__(self, name: str, model: torch.nn.Module, device: torch.device, *, channels_last: bool,
                 precision: str, crop_size: int | None, batch_size: int, seed: int,
                 config: TrainConfig | None = None, store: SliceStore | None = None) -> None:
        self.name = name
        self.device = device
        self.channels_last = channels_last
        self.precision = precision
        self.model = copy.deepcopy(model).to(device).train()
        if channels_last:
            self.model = self.model.to(memory_format=torch.channels_last)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.loss_fn = make_loss("weighted_bce_dice")
        self.config = config or TrainConfig(batch_size=batch_size, crop_size=crop_size,
                                            tumour_fraction=0.5 if crop_size else None)
        self.store = store  # the variant's own slices (the recipe's are resized to its image_size), else the shared
        self.rng = np.random.default_rng(seed)
        self.gen = torch.Generator().manual_seed(seed)
        self.data_times: list[float] = []
        self.compute_times: list[float] = []

    @property
    def bf16(self) -> bool:
        return isinstance(self._autocast(), torch.autocast)

    def _autocast(self):
        if self.precision == "fp32":
            return contextlib.nullcontext()
        return inference.autocast_context(self.device, self.precision)

    def step(self, store: SliceStore, record: bool) -> float:
        """One step: the data pipeline, then forward/backward/update; returns the loss."""
        c = self.config
        store = self.store or store
        t0 = time.perf_counter()
        idx = self.rng.integers(len(store.images), size=c.batch_size)
        tumour = store.tumour_slices
        from_tumour = np.zeros(c.batch_size, bool)
        if c.tumour_fraction and tumour.size:
            from_tumour = self.rng.random(c.batch_size) < c.tumour_fraction
            idx = np.where(from_tumour, tumour[self.rng.integers(tumour.size, size=c.batch_size)], idx)
        x, y, stats = training._make_batch(store, idx, from_tumour, c, self.rng)
        x = normalize(x, stats)
        x, y = augment_batch(x, y, self.gen, c.augmentation())
        x, y = x.to(self.device), y.to(self.device)
        if self.channels_last:
            x = x.contiguous(memory_format=torch.channels_last)
        t1 = time.perf_counter()
        with self._autocast():
            logits = self.model(x)
        loss = self.loss_fn(logits.float(), y)
        self.optimizer.zero_grad(set_to_none=True)
        loss.backward()
        self.optimizer.step()
        value = float(loss.detach())  # synchronises (CUDA) before the clock stops
        t2 = time.perf_counter()
        if record:
            self.data_times.append(t1 - t0)
            self.compute_times.append(t2 - t1)
        return value

    def pixels_per_sample(self, store: SliceStore) -> int:
        store = self.store or store
        size = self.config.crop_size
        return size * size if size else int(store.images.shape[1] * store.images.shape[2])


def train_flops_per_pixel(model: torch.nn.Module, size: int = 256) -> float:
    """Forward + backward FLOPs of one slice per pixel (torch.utils.flop_counter)."""
    from torch.utils.flop_counter import FlopCounterMode

    m = copy.deepcopy(model).train()
    counter = FlopCounterMode(display=False)
    with counter:
        m(torch.zeros(1, 3, size, size)).sum().backward()
    return counter.get_total_flops() / (size * size)


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--patients", type=int, default=4, help="real patients (or phantoms) in the slice store")
    parser.add_argument("--max-slices", type=int, default=None, help="cap slices per patient (smoke runs)")
    parser.add_argument("--batch-size", type=int, default=8)
    parser.add_argument("--steps", type=int, default=10, help="timed steps per variant")
    parser.add_argument("--warmup", type=int, default=2, help="untimed steps per variant first")
    parser.add_argument("--crop-size", type=int, default=0,
                        help="also time the product on C x C crops (the previous recipe's 128); 0 leaves it out")
    parser.add_argument("--recipe", type=Path, default=Path(__file__).resolve().parents[1] / "training" / "configs"
                        / "default.toml", help="also time this training config's own step (its model, image size, "
                        "augmentation), as the product runs it and in forced fp32")
    parser.add_argument("--device", default="cpu", help="cpu / cuda / mps / auto")
    parser.add_argument("--seed", type=int, default=0)
    args = parser.parse_args(argv)
    if args.crop_size and (args.crop_size % 16 or args.crop_size < 32):
        parser.error("--crop-size must be a multiple of 16 and at least 32 (or 0)")
    apply_threads(args.threads)
    device = inference.resolve_device(args.device)
    facts = machine_facts()
    print_machine_facts(facts)

    t0 = time.perf_counter()
    store, data_note = build_store(args)
    print(f"Data: {data_note}: {len(store.images)} slices of {store.images.shape[1]}x{store.images.shape[2]}, "
          f"{store.tumour_slices.size} with tumour (loaded in {time.perf_counter() - t0:.1f} s)")
    size = store.images.shape[1]
    if args.crop_size and args.crop_size > min(store.images.shape[1:3]):
        parser.error(f"--crop-size {args.crop_size} is larger than the slices ({size})")

    torch.manual_seed(args.seed)
    base = UNet()
    product_cl = training.training_memory_format(device, "auto") == torch.channels_last  # the product's own choice
    variants = [
        Variant("naive", base, device, channels_last=False, precision="fp32", crop_size=None,
                batch_size=args.batch_size, seed=args.seed),
        Variant("product", base, device, channels_last=product_cl, precision="auto", crop_size=None,
                batch_size=args.batch_size, seed=args.seed),
    ]
    if args.crop_size:
        variants.append(Variant(f"product_crop{args.crop_size}", base, device, channels_last=product_cl, precision="auto",
                                crop_size=args.crop_size, batch_size=args.batch_size, seed=args.seed))
    if args.recipe:
        recipe = TrainConfig.from_file(args.recipe)
        recipe.batch_size = args.batch_size
        model = UNet(ModelConfig(features=tuple(recipe.model_features), bottleneck=recipe.model_bottleneck,
                                 norm=recipe.model_norm))
        side = recipe.image_size
        small = SliceStore(store.patient_ids, *resize_pair(store.images, store.masks, side), store.stats,
                           store.patient_of_slice, store.offsets)
        for precision in (recipe.precision, "fp32"):
            cl = training.training_memory_format(device, precision) == torch.channels_last
            variants.append(Variant(f"{recipe.name}_{precision}", model, device, channels_last=cl, precision=precision,
                                    crop_size=None, batch_size=args.batch_size, seed=args.seed, config=recipe,
                                    store=small))
    for v in variants:
        print(f"  {v.name:18s} {'channels_last' if v.channels_last else 'NCHW'}, "
              f"{'bf16 autocast' if v.bf16 else 'fp32'}, "
              f"{f'{v.config.crop_size}x{v.config.crop_size} crops' if v.config.crop_size else 'whole slices'} of "
              f"{(v.store or store).images.shape[1]} px, {v.model.config.norm} norm, "
              f"batch {args.batch_size}")
    flops_px = train_flops_per_pixel(base, 256 if size >= 256 else -(-size // 16) * 16)
    print(f"  forward+backward: {flops_px * 256 * 256 / 1e9:.1f} GFLOP per 256x256 slice\n")

    print(f"Warm-up {args.warmup} + timed {args.steps} steps per variant, alternating...", flush=True)
    for i in range(args.warmup + args.steps):
        order = variants if i % 2 == 0 else variants[::-1]
        for v in order:
            v.step(store, record=i >= args.warmup)

    results = {}
    for v in variants:
        total = [d + c for d, c in zip(v.data_times, v.compute_times)]
        step_s = median(total)
        px = v.pixels_per_sample(store)
        results[v.name] = {
            "channels_last": v.channels_last, "bf16": v.bf16, "crop_size": v.config.crop_size,
            "batch_size": args.batch_size, "median_step_s": step_s, "median_data_s": median(v.data_times),
            "median_compute_s": median(v.compute_times),
            "data_share": sum(v.data_times) / max(sum(total), 1e-12),
            "slices_per_s": args.batch_size / step_s,
            "megapixels_per_s": args.batch_size * px / step_s / 1e6,
            "gflops_per_s": args.batch_size * px * flops_px / median(v.compute_times) / 1e9,
            "step_seconds": total,
        }
    base_name = variants[0].name
    print()
    print_table(
        ["variant", "step ms", "data ms", "compute ms", "data share %", "slices/s", "Mpx/s", f"x vs {base_name} (px)",
         "GFLOP/s (compute)"],
        [[n, 1000 * r["median_step_s"], 1000 * r["median_data_s"], 1000 * r["median_compute_s"], 100 * r["data_share"],
          r["slices_per_s"], r["megapixels_per_s"], r["megapixels_per_s"] / results[base_name]["megapixels_per_s"],
          r["gflops_per_s"]] for n, r in results.items()],
        title=f"Training step, batch {args.batch_size} (median of {args.steps} steps)", digits=3,
    )
    print("  data ms: sampling + crop + normalize + augment_batch (the pipeline training.train runs in-line);")
    print("  data share: total data time / total step time, i.e. the share of the step spent waiting for data.")
    print("  slices/s counts crops as slices; compare crops with whole slices by Mpx/s (pixels per second).")
    print("  GFLOP/s: forward+backward FLOPs (flop_counter) / compute time; see benchmarks/inference.py for the")
    print("  machine's matmul peak.\n")
    peak = max_rss_mib()
    print(f"Process peak RSS (ru_maxrss): {peak:.0f} MiB")
    payload = {"benchmark": "training", "machine": facts, "data": data_note, "slices": int(len(store.images)),
               "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "train_flops_per_256_slice": flops_px * 256 * 256, "variants": results,
               "process_ru_maxrss_mib": peak}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
