"""Inference benchmark: the naive baseline against the product's default path, in one process.

NAIVE: eager fp32, NCHW, one whole 256x256 slice at a time, every slice (no cropping, no skipping);
written here from ``model.UNet`` + ``transforms.normalize`` so that it shares the normalisation.
PRODUCT: what the CLI, the docks and evaluation run (``inference.predict_any_size`` at the size the model
was trained at, from its card: slices resized for the network and probabilities pasted back at the slice's
size; batches, channels_last, one head crop per volume, empty-slice skipping, bf16 autocast where the CPU is
fast at it). ``--reference-weights`` adds ``reference``: the NAIVE path with other weights (the previous
shipped model), to compare the product's Dice against it in the same run.

Runs alternate (every variant on a patient, then the next patient; the order flips every repeat)
so that a drift in machine speed hits every variant alike. Prints slices/s, whole-patient latency,
peak memory, matmul GFLOP/s and the share of it the network reaches, and how the masks differ.

    LD_PRELOAD=/usr/lib/x86_64-linux-gnu/libtcmalloc_minimal.so.4 python benchmarks/inference.py
    python benchmarks/inference.py --phantom --phantom-size 64 --patients 1 --repeats 1 --max-slices 8 \\
        --matmul-size 256 --matmul-seconds 0.2   # smoke run
"""

from __future__ import annotations

import argparse
import copy
import inspect
import json
import subprocess
import sys
import time
from pathlib import Path

import numpy as np
import torch

from _common import (
    RssSampler,
    add_common_args,
    apply_threads,
    load_cases,
    load_weights,
    machine_facts,
    matmul_gflops,
    max_rss_mib,
    median,
    print_machine_facts,
    print_table,
    write_json,
)
from napari_lgg_seg import inference
from napari_lgg_seg.metrics import dice
from napari_lgg_seg.transforms import normalize, pad_to_multiple, to_tensor_batch, volume_channel_stats

PRODUCT_BATCH = inspect.signature(inference.iter_predict_volume).parameters["batch_size"].default

# batch (None: --batch-size or the product's default), memory format, head crop, skip empty slices, precision
VARIANTS: dict[str, dict] = {
    "naive": {"batch": 1, "channels_last": False, "crop": False, "skip": False, "precision": "fp32"},
    "batched_fp32": {"batch": None, "channels_last": False, "crop": False, "skip": False, "precision": "fp32"},
    "channels_last": {"batch": None, "channels_last": True, "crop": False, "skip": False, "precision": "fp32"},
    "crop": {"batch": None, "channels_last": True, "crop": True, "skip": True, "precision": "fp32"},
    "bf16": {"batch": None, "channels_last": True, "crop": False, "skip": False, "precision": "bf16"},
    "product": {"batch": None, "channels_last": True, "crop": True, "skip": True, "precision": "auto"},
    "reference": {"batch": 1, "channels_last": False, "crop": False, "skip": False, "precision": "fp32"},
}
DESCRIPTIONS = {
    "naive": "eager fp32, NCHW, 1 whole slice per call, all slices",
    "batched_fp32": "batches, fp32, NCHW, whole slices, all slices",
    "channels_last": "batches, fp32, channels_last, whole slices, all slices",
    "crop": "batches, fp32, channels_last, head crop, skip empty slices",
    "bf16": "batches, bf16 autocast (forced), channels_last, whole slices",
    "product": "inference.predict_any_size at the card's image size, defaults",
    "reference": "the naive path with --reference-weights",
}


# ---------------------------------------------------------------- the predictors


def predict_naive(model: torch.nn.Module, images: np.ndarray, device: torch.device) -> np.ndarray:
    """The baseline: one whole slice at a time, fp32, NCHW, no cropping or skipping."""
    stats = torch.from_numpy(volume_channel_stats(images))[None]
    probs = np.zeros(images.shape[:3], np.float32)
    with torch.inference_mode():
        for z in range(images.shape[0]):
            x = normalize(to_tensor_batch(images[z:z + 1]), stats)
            x, (h, w) = pad_to_multiple(x)
            probs[z] = torch.sigmoid(model(x.to(device)))[0, 0, :h, :w].cpu().numpy()
    return probs


def predict_variant(model: torch.nn.Module, images: np.ndarray, device: torch.device, *, batch: int,
                    channels_last: bool, crop: bool, skip: bool, precision: str) -> np.ndarray:
    """One idea at a time: batching, memory format, head crop + skipping, precision."""
    z, h, w, _ = images.shape
    stats = torch.from_numpy(volume_channel_stats(images))[None]
    probs = np.zeros((z, h, w), np.float32)
    indices = np.arange(z)
    if skip:
        indices = indices[(images > inference.HEAD_THRESHOLD).reshape(z, -1).any(axis=1)]
    with torch.inference_mode(), inference.autocast_context(device, precision):
        for start in range(0, indices.size, batch):
            idx = indices[start:start + batch]
            rows, cols = inference.head_bounding_box(images[indices]) if crop else (slice(0, h), slice(0, w))
            x = normalize(to_tensor_batch(images[idx][:, rows, cols]), stats.expand(len(idx), -1, -1))
            x, (ch, cw) = pad_to_multiple(x)
            x = x.to(device)
            if channels_last:
                x = x.contiguous(memory_format=torch.channels_last)
            probs[idx, rows, cols] = torch.sigmoid(model(x).float())[:, 0, :ch, :cw].cpu().numpy()
    return probs


class Runner:
    """Holds the two model copies (NCHW and channels_last) and runs a named variant."""

    def __init__(self, model: torch.nn.Module, device: torch.device, batch_size: int | None, size: int = 256,
                 reference: torch.nn.Module | None = None) -> None:
        self.device = device
        self.batch_size = batch_size
        self.size = size  # the slice size the model was trained at (its card's image_size)
        self.nchw = copy.deepcopy(model).to(device).eval()
        self.cl = inference.prepare_model(copy.deepcopy(model), device)
        self.reference = reference.to(device).eval() if reference is not None else None

    def batch_of(self, name: str) -> int:
        b = VARIANTS[name]["batch"]
        return b if b is not None else (self.batch_size or PRODUCT_BATCH)

    def run(self, name: str, images: np.ndarray) -> np.ndarray:
        v = VARIANTS[name]
        if name == "naive":
            return predict_naive(self.nchw, images, self.device)
        if name == "reference":
            if self.reference is None:
                raise SystemExit("the reference variant needs --reference-weights")
            return predict_naive(self.reference, images, self.device)
        if name == "product":
            kwargs = {"batch_size": self.batch_size} if self.batch_size else {}
            return inference.predict_any_size(self.cl, images, size=self.size, device=self.device, **kwargs)
        model = self.cl if v["channels_last"] else self.nchw
        return predict_variant(model, images, self.device, batch=self.batch_of(name), channels_last=v["channels_last"],
                               crop=v["crop"], skip=v["skip"], precision=v["precision"])

    def uses_bf16(self, name: str) -> bool:
        p = VARIANTS[name]["precision"]
        if p == "fp32":
            return False
        if self.device.type == "cpu":
            return p == "bf16" or inference.cpu_has_fast_bf16()
        return self.device.type == "cuda"

    def pixels_computed(self, name: str, images: np.ndarray) -> int:
        """Pixels the network actually sees (after skipping, cropping and padding to 16) for one volume."""
        v = VARIANTS[name]
        if name == "product":  # the network sees the slices at its own size
            z, h, w, _ = images.shape
            images = inference.resize_images(images, inference.model_input_size(h, w, self.size))
        z, h, w, _ = images.shape
        indices = np.arange(z)
        if v["skip"]:
            indices = indices[(images > inference.HEAD_THRESHOLD).reshape(z, -1).any(axis=1)]
        total, batch = 0, self.batch_of(name)
        rows, cols = inference.head_bounding_box(images[indices]) if v["crop"] and indices.size else (
            slice(0, h), slice(0, w))
        ch, cw = rows.stop - rows.start, cols.stop - cols.start
        for start in range(0, indices.size, batch):
            total += len(indices[start:start + batch]) * (-(-ch // 16) * 16) * (-(-cw // 16) * 16)
        return total


def flops_per_slice(model: torch.nn.Module, h: int = 256, w: int = 256) -> int:
    """FLOPs of one forward pass on one h x w slice (torch.utils.flop_counter; a multiply-add is 2)."""
    from torch.utils.flop_counter import FlopCounterMode

    counter = FlopCounterMode(display=False)
    with torch.inference_mode(), counter:
        model(torch.zeros(1, 3, h, w))
    return int(counter.get_total_flops())


# ---------------------------------------------------------------- memory in a fresh process


def memory_child(args: argparse.Namespace) -> None:
    """Run one variant once on the largest case in this (fresh) process; print its peak memory as JSON."""
    apply_threads(args.threads)
    model, _, _, size = load_weights(args.weights)
    reference = load_weights(args.reference_weights)[0] if args.reference_weights else None
    cases, _ = load_cases(args.data, args.patients, args.max_slices, args.phantom, args.phantom_size)
    case = max(cases, key=lambda c: c.num_slices)
    runner = Runner(model, inference.resolve_device(args.device), args.batch_size, size, reference)
    del model
    before = max_rss_mib()
    with RssSampler() as mem:
        runner.run(args.memory_child, case.images)
    print("MEMORY_RESULT " + json.dumps({"variant": args.memory_child, "patient": case.patient_id,
                                         "slices": case.num_slices, "peak_delta_mib": mem.peak_delta_mib,
                                         "rss_before_mib": mem.start / 2 ** 20, "ru_maxrss_before_mib": before,
                                         "ru_maxrss_mib": max_rss_mib()}))


def measure_memory_subprocess(args: argparse.Namespace, name: str) -> dict | None:
    cmd = [sys.executable, str(Path(__file__).resolve()), "--memory-child", name, "--data", str(args.data),
           "--patients", str(args.patients), "--threads", str(args.threads), "--device", args.device]
    for flag, value in (("--max-slices", args.max_slices), ("--batch-size", args.batch_size),
                        ("--weights", args.weights), ("--reference-weights", args.reference_weights)):
        if value:
            cmd += [flag, str(value)]
    if args.phantom:
        cmd += ["--phantom", "--phantom-size", str(args.phantom_size)]
    out = subprocess.run(cmd, capture_output=True, text=True)
    for line in out.stdout.splitlines():
        if line.startswith("MEMORY_RESULT "):
            return json.loads(line.split(" ", 1)[1])
    print(f"  memory measurement of {name} failed:\n{out.stderr[-2000:]}", file=sys.stderr)
    return None


# ---------------------------------------------------------------- main


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--patients", type=int, default=3,
                        help="patients besides the smallest and the largest (by slice count)")
    parser.add_argument("--max-slices", type=int, default=None, help="cap slices per patient (smoke runs)")
    parser.add_argument("--repeats", type=int, default=3, help="timed runs per patient and variant (median)")
    parser.add_argument("--batch-size", type=int, default=None,
                        help=f"batch size of the batched variants and the product (default: the product's, "
                             f"{PRODUCT_BATCH})")
    parser.add_argument("--variants", default="naive,product",
                        help=f"comma-separated, compared in this order; choose from {','.join(VARIANTS)}")
    parser.add_argument("--weights", type=Path, default=None,
                        help="checkpoint to use (default: the shipped model, else a random full-size U-Net)")
    parser.add_argument("--reference-weights", type=Path, default=None,
                        help="weights of the 'reference' variant (e.g. the previous shipped model), run the naive way")
    parser.add_argument("--device", default="cpu", help="cpu / cuda / mps / auto")
    parser.add_argument("--threshold", type=float, default=0.5, help="probability threshold for the masks")
    parser.add_argument("--matmul-size", type=int, default=768, help="n of the n x n matmul peak measurement")
    parser.add_argument("--matmul-seconds", type=float, default=2.0, help="time per matmul measurement")
    parser.add_argument("--memory", choices=("subprocess", "inline", "off"), default="subprocess",
                        help="peak memory: one fresh process per variant on the largest patient (clean), "
                             "RSS sampling in this process (allocator reuse hides memory), or off")
    parser.add_argument("--memory-child", default=None, help=argparse.SUPPRESS)
    args = parser.parse_args(argv)
    if args.memory_child:
        memory_child(args)
        return None

    names = [n.strip() for n in args.variants.split(",") if n.strip()]
    unknown = [n for n in names if n not in VARIANTS]
    if unknown or not names:
        parser.error(f"unknown variant(s) {', '.join(unknown)}; choose from {', '.join(VARIANTS)}")
    apply_threads(args.threads)
    device = inference.resolve_device(args.device)
    facts = machine_facts()
    print_machine_facts(facts)

    model, weights_note, trained, size = load_weights(args.weights)
    reference = load_weights(args.reference_weights)[0] if args.reference_weights else None
    print(f"Weights: {weights_note} (trained at {size} px: the product runs at that size)"
          + (f"; reference: {args.reference_weights}" if reference is not None else ""))
    if not trained:
        print("  NOTE: random weights: speed numbers are valid, Dice numbers are MEANINGLESS.")
    cases, data_note = load_cases(args.data, args.patients, args.max_slices, args.phantom, args.phantom_size)
    print(f"Data: {data_note}")
    print(f"  {len(cases)} patients: " + ", ".join(f"{c.patient_id} ({c.num_slices} slices)" for c in cases))
    runner = Runner(model, device, args.batch_size, size, reference)
    for n in names:
        print(f"  {n:14s} {DESCRIPTIONS[n]} (batch {runner.batch_of(n)}; bf16: {runner.uses_bf16(n)})")
    print()

    # processor peak and network FLOPs
    print(f"Measuring {args.matmul_size}x{args.matmul_size} matmul GFLOP/s (fp32, bf16)...", flush=True)
    peak = {"fp32": matmul_gflops("float32", args.matmul_size, args.matmul_seconds, str(device)),
            "bf16": matmul_gflops("bfloat16", args.matmul_size, args.matmul_seconds, str(device))}
    h, w = cases[0].images.shape[1:3]
    ph, pw = -(-h // 16) * 16, -(-w // 16) * 16
    full_flops = flops_per_slice(copy.deepcopy(model).eval(), ph, pw)
    flops_per_pixel = full_flops / (ph * pw)  # every layer is a same-size conv at its level: FLOPs scale with pixels
    print(f"  fp32 {peak['fp32']:.1f} GFLOP/s, bf16 {peak['bf16']:.1f} GFLOP/s; "
          f"U-Net forward on one {ph}x{pw} slice: {full_flops / 1e9:.2f} GFLOP\n")

    # warm-up (oneDNN primitive creation, allocator): every variant once on the smallest patient
    smallest = min(cases, key=lambda c: c.num_slices)
    print("Warm-up...", flush=True)
    for n in names:
        runner.run(n, smallest.images)

    times: dict[str, dict[str, list[float]]] = {n: {c.patient_id: [] for c in cases} for n in names}
    masks: dict[str, dict[str, np.ndarray]] = {n: {} for n in names}
    inline_mem: dict[str, float] = dict.fromkeys(names, 0.0)
    print(f"Timing {args.repeats} repeat(s) x {len(cases)} patients x {len(names)} variants...", flush=True)
    for r in range(args.repeats):
        order = names if r % 2 == 0 else names[::-1]
        for case in cases:
            for n in order:
                sampler = RssSampler() if args.memory == "inline" else None
                if sampler:
                    sampler.__enter__()
                t0 = time.perf_counter()
                probs = runner.run(n, case.images)
                elapsed = time.perf_counter() - t0
                if sampler:
                    sampler.__exit__(None, None, None)
                    inline_mem[n] = max(inline_mem[n], sampler.peak_delta_mib)
                times[n][case.patient_id].append(elapsed)
                if r == 0:
                    masks[n][case.patient_id] = probs >= args.threshold

    total_slices = sum(c.num_slices for c in cases)
    largest = max(cases, key=lambda c: c.num_slices)
    results: dict[str, dict] = {}
    for n in names:
        med = {pid: median(t) for pid, t in times[n].items()}
        total_time = sum(med.values())
        pixels = sum(runner.pixels_computed(n, c.images) for c in cases)
        actual_gflops = flops_per_pixel * pixels / total_time / 1e9
        relevant = "bf16" if runner.uses_bf16(n) else "fp32"
        results[n] = {
            "description": DESCRIPTIONS[n], "batch_size": runner.batch_of(n), "bf16": runner.uses_bf16(n),
            "slices_per_s": total_slices / total_time, "ms_per_slice": 1000 * total_time / total_slices,
            "latency_smallest_s": med[smallest.patient_id], "latency_largest_s": med[largest.patient_id],
            "median_seconds_per_patient": med,
            "actual_gflop": flops_per_pixel * pixels / 1e9, "actual_gflops_per_s": actual_gflops,
            "effective_gflops_per_s": full_flops * total_slices / total_time / 1e9,
            "peak_kind": relevant, "fraction_of_peak": actual_gflops / peak[relevant],
        }
        if args.memory == "inline":
            results[n]["peak_delta_mib"] = inline_mem[n]
    if args.memory == "subprocess":
        print("Measuring peak memory, one fresh process per variant on the largest patient...", flush=True)
        for n in names:
            m = measure_memory_subprocess(args, n)
            if m:
                results[n]["peak_delta_mib"] = m["peak_delta_mib"]
                results[n]["process_ru_maxrss_mib"] = m["ru_maxrss_mib"]
    print()

    base = names[0]
    print_table(
        ["variant", "slices/s", "ms/slice", f"x vs {base}", f"smallest ({smallest.num_slices} sl) s",
         f"largest ({largest.num_slices} sl) s", "peak +MiB", "GFLOP/s actual", "GFLOP/s effective", "% of peak"],
        [[n, r["slices_per_s"], r["ms_per_slice"], r["slices_per_s"] / results[base]["slices_per_s"],
          r["latency_smallest_s"], r["latency_largest_s"], r.get("peak_delta_mib"), r["actual_gflops_per_s"],
          r["effective_gflops_per_s"], f"{100 * r['fraction_of_peak']:.1f} ({r['peak_kind']})"]
         for n, r in results.items()],
        title=f"Throughput over {len(cases)} patients, {total_slices} slices (median of {args.repeats})",
    )
    print("  slices/s: all slices of all patients / sum of per-patient median times (skipped slices count as done).")
    print("  peak +MiB: resident memory above the level before the call"
          + (" (fresh process, largest patient)." if args.memory == "subprocess" else "."))
    print("  GFLOP/s actual: FLOPs the network really ran (after cropping/skipping) per second; effective: FLOPs of")
    print(f"  full {ph}x{pw} slices for every slice per second; % of peak: actual / measured matmul GFLOP/s")
    print(f"  ({peak['fp32']:.1f} fp32, {peak['bf16']:.1f} bf16).\n")

    print_table(["patient", "slices"] + [f"{n} s" for n in names],
                [[c.patient_id, c.num_slices] + [results[n]["median_seconds_per_patient"][c.patient_id] for n in names]
                 for c in cases], title="Whole-patient latency (median seconds)")

    accuracy = accuracy_report(cases, names, masks, trained)
    peak_rss = max_rss_mib()
    print(f"Process peak RSS (ru_maxrss, everything in this process): {peak_rss:.0f} MiB")
    payload = {"benchmark": "inference", "machine": facts, "weights": weights_note, "trained_weights": trained,
               "data": data_note, "patients": {c.patient_id: c.num_slices for c in cases},
               "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()},
               "matmul_gflops": peak, "flops_per_full_slice": full_flops, "variants": results, "accuracy": accuracy,
               "process_ru_maxrss_mib": peak_rss}
    write_json(args.json, payload)
    return payload


def accuracy_report(cases, names: list[str], masks: dict, trained: bool) -> dict:
    """Per-patient Dice vs ground truth for each variant, its difference to the first, and mask agreement."""
    base = names[0]
    with_truth = [c for c in cases if c.masks is not None]
    report: dict = {"per_patient": {}, "summary": {}}
    rows = []
    for c in cases:
        entry = {}
        for n in names:
            entry[f"dice_{n}"] = dice(masks[n][c.patient_id], c.masks) if c.masks is not None else None
            entry[f"agreement_{n}_vs_{base}"] = dice(masks[n][c.patient_id], masks[base][c.patient_id])
        report["per_patient"][c.patient_id] = entry
        rows.append([c.patient_id] + [entry[f"dice_{n}"] for n in names]
                    + [entry[f"agreement_{n}_vs_{base}"] for n in names[1:]])
    print_table(["patient"] + [f"Dice {n}" for n in names] + [f"{n} vs {base}" for n in names[1:]], rows,
                title="Masks: Dice vs ground truth per path, and Dice between the paths' masks", digits=4)
    summary_rows = []
    for n in names:
        d = [report["per_patient"][c.patient_id][f"dice_{n}"] for c in with_truth]
        db = [report["per_patient"][c.patient_id][f"dice_{base}"] for c in with_truth]
        agree = [report["per_patient"][c.patient_id][f"agreement_{n}_vs_{base}"] for c in cases]
        s = {"mean_dice": float(np.mean(d)) if d else None,
             "mean_abs_dice_diff_vs_base": float(np.mean(np.abs(np.subtract(d, db)))) if d else None,
             "mean_agreement_dice_vs_base": float(np.mean(agree))}
        report["summary"][n] = s
        summary_rows.append([n, s["mean_dice"], s["mean_abs_dice_diff_vs_base"], s["mean_agreement_dice_vs_base"]])
    print_table(["variant", "mean Dice vs truth", f"mean |dDice| vs {base}", f"mean Dice with {base} mask"],
                summary_rows, title="Accuracy summary (per-patient volume Dice; 1.0 when both masks are empty)",
                digits=4)
    if not trained:
        print("  NOTE: random weights: the Dice numbers above are MEANINGLESS (the speed numbers are not).\n")
    return report


if __name__ == "__main__":
    main()
