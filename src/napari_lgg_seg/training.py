"""The training engine: one generator that the CLI, the dock widget and the tests share (Qt-free).

``train(...)`` yields report dicts (``kind`` = "start", "step", "epoch", "done") so that a GUI can
draw progress and a CLI can print it. Runs under ``torchrun`` with DistributedDataParallel.
"""

from __future__ import annotations

import dataclasses
import json
import math
import os
import platform
import subprocess
import time
from collections.abc import Callable, Iterator
from pathlib import Path

import numpy as np
import torch
import torch.distributed as dist

from .config import TrainConfig
from .data import SliceStore, index_patients, sample_crop_origins, split_patients
from .inference import autocast_context, cpu_uses_bf16, resolve_device
from .io import atomic_write_csv, atomic_write_text
from .losses import make_loss
from .metrics import score_patient, summarize
from .model import (
    CheckpointError,
    ModelConfig,
    UNet,
    atomic_torch_save,
    checkpoint_dict,
    load_model,
    read_checkpoint,
)
from .plots import save_curve_pngs, save_prediction_grid
from .transforms import (
    FLAIR,
    MISSING_SEQUENCES,
    augment_batch,
    normalize,
    pad_to_multiple,
    simulate_missing_sequences,
    to_tensor_batch,
)

BEST = "best.pt"
LAST = "last.pt"
SELECTION_METRIC = "patient_dice_mean"
FALLBACK_SELECTION_METRIC = "slice_dice"  # when no validation patient has tumour


def _git_commit() -> str:
    if os.environ.get("LGG_SEG_COMMIT"):
        return os.environ["LGG_SEG_COMMIT"]
    try:
        out = subprocess.run(["git", "rev-parse", "HEAD"], cwd=Path(__file__).parent, capture_output=True,
                             text=True, timeout=5)
        return out.stdout.strip() or "unknown"
    except Exception:
        return "unknown"


def hardware_description(device: torch.device) -> str:
    """A one-line description of the training hardware, for the model card."""
    if device.type == "cuda":
        return torch.cuda.get_device_name(device)
    cpu = platform.processor() or platform.machine()
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    cpu = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    return f"{cpu}, {os.cpu_count()} cores, torch threads {torch.get_num_threads()}"


class _DistributedContext:
    def __init__(self) -> None:
        self.world_size = int(os.environ.get("WORLD_SIZE", "1"))
        self.rank = int(os.environ.get("RANK", "0"))
        self.local_rank = int(os.environ.get("LOCAL_RANK", "0"))
        self.enabled = self.world_size > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    def setup(self, device: torch.device) -> None:
        if self.enabled and not dist.is_initialized():
            dist.init_process_group("nccl" if device.type == "cuda" else "gloo")

    def broadcast_float(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.broadcast(t, 0)
        return float(t.item())

    def mean(self, value: float) -> float:
        if not self.enabled:
            return value
        t = torch.tensor([value], dtype=torch.float64)
        dist.all_reduce(t)
        return float(t.item()) / self.world_size

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()


def training_memory_format(device: torch.device, precision: str = "auto") -> torch.memory_format:
    """channels_last where it speeds training up (CUDA, CPU bf16 autocast); NCHW for fp32 on CPU.

    Measured on a 2-core AVX2 CPU (benchmarks/training.py): fp32 channels_last trains at 0.83x NCHW
    (its backward convolutions are slower), while inference is faster in channels_last.
    """
    if device.type == "cuda":
        return torch.channels_last
    if device.type == "cpu" and cpu_uses_bf16(precision):
        return torch.channels_last
    return torch.contiguous_format


def _lr_at(config: TrainConfig, step: int, total_steps: int) -> float:
    if config.warmup_steps and step < config.warmup_steps:
        return config.lr * (step + 1) / config.warmup_steps
    progress = (step - config.warmup_steps) / max(1, total_steps - config.warmup_steps)
    return config.min_lr + 0.5 * (config.lr - config.min_lr) * (1 + math.cos(math.pi * min(progress, 1.0)))


def _epoch_indices(store: SliceStore, config: TrainConfig, rng: np.random.Generator, steps: int,
                   rank: int, world: int) -> tuple[np.ndarray, np.ndarray]:
    """Slice indices for one epoch on this rank, and which were drawn from the tumour pool."""
    n_total = steps * config.batch_size * world
    if config.tumour_fraction is None:
        order = rng.permutation(len(store.images))
        reps = -(-n_total // len(order))
        order = np.concatenate([order] + [rng.permutation(len(order)) for _ in range(reps - 1)])[:n_total]
        from_tumour = np.zeros(len(order), bool)
    else:
        tumour = store.tumour_slices
        from_tumour = rng.random(n_total) < config.tumour_fraction
        if tumour.size == 0:
            from_tumour[:] = False
        order = np.where(from_tumour, tumour[rng.integers(max(tumour.size, 1), size=n_total)] if tumour.size
                         else 0, rng.integers(len(store.images), size=n_total))
    # distributed sampler: rank r takes every world-th sample
    return order[rank::world], from_tumour[rank::world]


def _make_batch(store: SliceStore, idx: np.ndarray, from_tumour: np.ndarray, config: TrainConfig,
                rng: np.random.Generator) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    if config.crop_size:
        c = config.crop_size
        origins = sample_crop_origins(store, idx, c, rng, from_tumour)
        images = np.stack([store.images[i, y:y + c, x:x + c] for i, (y, x) in zip(idx, origins)])
        masks = np.stack([store.masks[i, y:y + c, x:x + c] for i, (y, x) in zip(idx, origins)])
    else:
        images, masks = store.images[idx], store.masks[idx]
    x = to_tensor_batch(images)
    y = torch.from_numpy(masks)[:, None].float()
    stats = torch.from_numpy(store.stats[idx])
    return x, y, stats


@torch.no_grad()
def evaluate_store(model: torch.nn.Module, store: SliceStore, device: torch.device, *, precision: str = "auto",
                   batch_size: int = 16, threshold: float = 0.5, loss_fn: Callable | None = None,
                   keep_probabilities: bool = False, conditions: tuple[str, ...] | list[str] = ()) -> dict:
    """Per-patient scores (and mean loss) of a model on every patient of a store; whole slices.

    ``conditions`` (names of ``transforms.MISSING_SEQUENCES``) are scored too, with the sequences
    replaced by FLAIR the way the dataset stores a patient lacking them: ``result["conditions"][name]``.
    """
    model.eval()
    scores, losses, probabilities = [], [], {}
    by_condition: dict[str, list] = {c: [] for c in conditions if c != "intact"}
    for i, pid in enumerate(store.patient_ids):
        sl = store.patient_slices(i)
        truth = store.masks[sl]
        for condition in ["intact", *by_condition]:
            imgs = simulate_missing_sequences(store.images[sl], condition)
            stats = store.stats[sl].copy()
            for c in MISSING_SEQUENCES[condition]:  # a copied channel standardises like FLAIR
                stats[:, :, c] = stats[:, :, FLAIR]
            probs = np.zeros(truth.shape, np.float32)
            for start in range(0, len(imgs), batch_size):
                x = to_tensor_batch(imgs[start:start + batch_size])
                x, (h, w) = pad_to_multiple(normalize(x, torch.from_numpy(stats[start:start + batch_size])))
                x = x.to(device).contiguous(memory_format=training_memory_format(device, precision))
                with autocast_context(device, precision):
                    logits = model(x)[:, :, :h, :w].float()
                if loss_fn is not None and condition == "intact":
                    y = torch.from_numpy(truth[start:start + batch_size])[:, None].float().to(device)
                    losses.append((float(loss_fn(logits, y)), len(x)))
                probs[start:start + len(x)] = torch.sigmoid(logits)[:, 0].cpu().numpy()
            patient_scores = score_patient(pid, probs >= threshold, truth)
            if condition == "intact":
                scores.append(patient_scores)
                if keep_probabilities:
                    probabilities[pid] = probs
            else:
                by_condition[condition].append(patient_scores)
    summary = summarize(scores)
    if losses:
        summary["loss"] = sum(v * n for v, n in losses) / sum(n for _, n in losses)
    return {"summary": summary, "patients": scores, "probabilities": probabilities,
            "conditions": {c: {"summary": summarize(s), "patients": s} for c, s in by_condition.items()}}


def _rng_state(rng: np.random.Generator, gen: torch.Generator) -> dict:
    return {"numpy": json.dumps(rng.bit_generator.state), "torch": gen.get_state(),
            "torch_global": torch.get_rng_state()}


def _restore_rng(state: dict, rng: np.random.Generator, gen: torch.Generator) -> None:
    rng.bit_generator.state = json.loads(state["numpy"])
    gen.set_state(state["torch"])
    torch.set_rng_state(state["torch_global"])


def train(
    config: TrainConfig,
    data_roots: list[str | os.PathLike],
    out_dir: str | os.PathLike,
    *,
    resume: bool = False,
    should_stop: Callable[[], bool] | None = None,
    epochs: int | None = None,
    overwrite: bool = False,
    resume_overrides: dict | None = None,
) -> Iterator[dict]:
    """Train a U-Net; yields reports. Writes checkpoints, metrics.csv and PNGs into ``out_dir``.

    With ``resume`` the run continues from ``out_dir/last.pt`` (model, optimiser, scheduler,
    epoch, RNG) under the saved run's config; ``epochs`` then sets a new total number of epochs
    (to extend a finished run), else the saved one is kept. ``should_stop`` is polled after every
    batch; a stop at the end of an epoch saves it, a stop mid-epoch discards the partial epoch
    (``last.pt`` keeps the state at that epoch's start, so a resume repeats it exactly).

    A new run refuses an ``out_dir`` that holds checkpoints (``*.pt``) unless ``overwrite`` (which then
    removes the previous run's checkpoints); ``resume_overrides`` (device, precision, num_threads,
    cache_dir) apply to a resumed run, whose other settings are the saved ones. Checks raise before any work.
    """
    config.validate()
    check_run_folder(out_dir, resume=resume, overwrite=overwrite)
    ctx = _DistributedContext()
    device = resolve_device(config.device)
    if ctx.enabled and device.type == "cuda":
        device = torch.device("cuda", ctx.local_rank)
        torch.cuda.set_device(device)
    ctx.setup(device)
    if config.num_threads:
        torch.set_num_threads(config.num_threads)
    out = Path(out_dir)
    last_path = out / LAST
    resume_state = None
    if resume:
        resume_state, saved = read_resume_state(last_path)
        config = saved  # the saved run defines the experiment; epochs may be extended
        if epochs is not None:
            config = dataclasses.replace(config, epochs=int(epochs))
        if resume_overrides:
            config = dataclasses.replace(config, **resume_overrides)
        config.validate()
    elif epochs is not None:
        config = dataclasses.replace(config, epochs=int(epochs))
        config.validate()
    if ctx.is_main:
        out.mkdir(parents=True, exist_ok=True)

    t_start = time.perf_counter()
    folders = index_patients(data_roots)
    if resume_state is not None:
        split = resume_state["meta"]["split"]
        missing = [p for part in ("train", "val", "test") for p in split.get(part, []) if p not in folders]
        if missing:
            raise ValueError(
                f"cannot resume {out}: the data roots given ({', '.join(map(str, data_roots))}) lack "
                f"{len(missing)} patient(s) of the run's split ({', '.join(missing[:5])}"
                f"{', ...' if len(missing) > 5 else ''}); give the run's data roots "
                f"({', '.join(resume_state['meta'].get('data_roots', [])) or 'see its split.json'}).")
    else:
        split = split_patients(list(folders), val_fraction=config.val_fraction, test_fraction=config.test_fraction,
                               seed=config.seed, train=config.train_patients, val=config.val_patients,
                               test=config.test_patients)
    cache_dir = config.cache_dir or None
    train_store = SliceStore.load(folders, split["train"], cache_dir, image_size=config.image_size)
    val_store = (SliceStore.load(folders, split["val"], cache_dir, image_size=config.image_size)
                 if split["val"] else None)
    load_seconds = time.perf_counter() - t_start

    torch.manual_seed(config.seed)
    init_meta = {}
    if resume_state is not None:
        model = UNet(ModelConfig.from_dict(resume_state["model_config"]))
        # a resumed fine-tuning run keeps its start checkpoint in the card (the chain of training stages)
        if resume_state["meta"].get("init_weights"):
            init_meta = {"init_weights": resume_state["meta"]["init_weights"]}
    elif config.init_weights:
        # fine-tuning: the architecture is the start checkpoint's, whatever the config says
        model = load_model(config.init_weights).model
        config = dataclasses.replace(config, model_features=list(model.config.features),
                                     model_bottleneck=model.config.bottleneck, model_norm=model.config.norm)
        init_meta = {"init_weights": str(config.init_weights)}
    else:
        model = UNet(ModelConfig(features=tuple(int(f) for f in config.model_features),
                                 bottleneck=int(config.model_bottleneck), norm=config.model_norm))
    memory_format = training_memory_format(device, config.precision)
    model = model.to(device).to(memory_format=memory_format)
    net = model
    if ctx.enabled:
        net = torch.nn.parallel.DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)
    optimizer = torch.optim.Adam(model.parameters(), lr=config.lr, weight_decay=config.weight_decay)
    plateau = torch.optim.lr_scheduler.ReduceLROnPlateau(
        optimizer, mode="max", factor=config.plateau_factor, patience=config.plateau_patience, min_lr=config.min_lr)
    loss_fn = make_loss(config.loss, config.pos_weight)
    augmentation = config.augmentation()
    steps_per_epoch = config.steps_per_epoch or max(1, len(train_store.images) // (config.batch_size * ctx.world_size))
    total_steps = steps_per_epoch * config.epochs

    rng = np.random.default_rng(config.seed + 1000 * ctx.rank)
    epoch_rng = np.random.default_rng(config.seed)  # same on every rank: the sampler's shared order
    gen = torch.Generator().manual_seed(config.seed + 1000 * ctx.rank)
    start_epoch, step, best, history = 0, 0, -1.0, []
    best_epoch, selected_on = 0, SELECTION_METRIC
    wall_before = 0.0
    if resume_state is not None:
        model.load_state_dict(resume_state["state_dict"])
        ts = resume_state["train_state"]
        optimizer.load_state_dict(ts["optimizer"])
        plateau.load_state_dict(ts["scheduler"])
        _restore_rng(ts["rng"], rng, gen)
        epoch_rng.bit_generator.state = json.loads(ts["epoch_rng"])
        start_epoch, step, best = ts["epoch"], ts["step"], ts["best"]
        best_epoch, selected_on = ts.get("best_epoch", 0), ts.get("selected_on", SELECTION_METRIC)
        history = json.loads(ts["history"])
        wall_before = ts.get("wall_seconds", 0.0)

    meta_base = {
        "data_roots": [str(Path(r).resolve()) for r in data_roots],
        "split": split,
        "hardware": hardware_description(device),
        "device": str(device),
        "precision": config.precision,
        "torch": torch.__version__,
        "commit": _git_commit(),
        "world_size": ctx.world_size,
        "train_slices": int(len(train_store.images)),
        "train_tumour_slices": int(train_store.tumour_slices.size),
        **init_meta,
    }
    if ctx.is_main:
        if overwrite and not resume:  # the old run's checkpoints go only once the new run could start
            for old in _run_checkpoints(out):
                old.unlink()
        atomic_write_text(out / "split.json", json.dumps(split, indent=2))
        atomic_write_text(out / "config.json", json.dumps(config.to_dict(), indent=2))
    yield {"kind": "start", "epochs": config.epochs, "steps_per_epoch": steps_per_epoch, "total_steps": total_steps,
           "split": split, "load_seconds": load_seconds, "device": str(device), "start_epoch": start_epoch,
           "train_slices": int(len(train_store.images))}

    stopped = False
    run_start = time.perf_counter()
    for epoch in range(start_epoch, config.epochs):
        net.train()
        order, from_tumour = _epoch_indices(train_store, config, epoch_rng, steps_per_epoch, ctx.rank, ctx.world_size)
        epoch_loss, seen, data_time, compute_time = 0.0, 0, 0.0, 0.0
        epoch_start = time.perf_counter()
        for b in range(steps_per_epoch):
            t0 = time.perf_counter()
            sel = slice(b * config.batch_size, (b + 1) * config.batch_size)
            x, y, stats = _make_batch(train_store, order[sel], from_tumour[sel], config, rng)
            # augmentation runs where the network does (a GPU's cores, not the CPU's)
            x = normalize(x.to(device, non_blocking=True), stats)
            x, y = augment_batch(x, y.to(device, non_blocking=True), gen, augmentation)
            x = x.contiguous(memory_format=memory_format)
            t1 = time.perf_counter()
            if config.scheduler == "cosine":
                for group in optimizer.param_groups:
                    group["lr"] = _lr_at(config, step, total_steps)
            with autocast_context(device, config.precision):
                logits = net(x)
            loss = loss_fn(logits.float(), y)
            optimizer.zero_grad(set_to_none=True)
            loss.backward()
            optimizer.step()
            loss_value = float(loss.detach())
            t2 = time.perf_counter()
            data_time += t1 - t0
            compute_time += t2 - t1
            epoch_loss += loss_value * len(x)
            seen += len(x)
            step += 1
            yield {"kind": "step", "epoch": epoch + 1, "step": step, "batch": b + 1, "steps_per_epoch": steps_per_epoch,
                   "total_steps": total_steps, "loss": loss_value, "lr": optimizer.param_groups[0]["lr"],
                   "data_share": data_time / max(data_time + compute_time, 1e-9),
                   "slices_per_s": seen / max(data_time + compute_time, 1e-9)}
            if should_stop is not None and should_stop():
                stopped = True
                break
        train_loss = ctx.mean(epoch_loss / max(seen, 1))
        if stopped and b + 1 < steps_per_epoch:
            # an interrupted epoch is not validated; last.pt keeps the state at the epoch's start
            break
        record = {"epoch": epoch + 1, "step": step, "lr": optimizer.param_groups[0]["lr"], "train_loss": train_loss,
                  "epoch_seconds": time.perf_counter() - epoch_start,
                  "data_share": data_time / max(data_time + compute_time, 1e-9),
                  "train_slices_per_s": seen * ctx.world_size / max(time.perf_counter() - epoch_start, 1e-9)}
        metric = float("nan")
        validate = (epoch + 1) % max(config.validate_every, 1) == 0 or epoch + 1 == config.epochs
        if ctx.is_main and val_store is not None and validate:
            result = evaluate_store(model, val_store, device, precision=config.precision,
                                    batch_size=config.val_batch_size, threshold=config.threshold, loss_fn=loss_fn,
                                    keep_probabilities=True, conditions=config.val_conditions)
            s = result["summary"]
            record.update({f"val_{k}": v for k, v in s.items() if isinstance(v, float)})
            for condition, r in result["conditions"].items():  # e.g. val_flair_only_patient_dice_mean
                record.update({f"val_{condition}_{k}": v for k, v in r["summary"].items()
                               if k in ("patient_dice_mean", "patient_dice_median") and isinstance(v, float)})
            selected_on, metric = selection_metric(s)
            pid = max(result["probabilities"], key=lambda p: int(val_store.masks[val_store.patient_slices(
                val_store.patient_ids.index(p))].sum()))
            sl = val_store.patient_slices(val_store.patient_ids.index(pid))
            save_prediction_grid(out / "val_predictions.png", val_store.images[sl], val_store.masks[sl],
                                 result["probabilities"][pid], config.threshold,
                                 title=f"{pid}, epoch {epoch + 1}")
        metric = ctx.broadcast_float(metric)
        if config.scheduler == "plateau" and not math.isnan(metric):
            plateau.step(metric)
        history.append(record)
        wall = wall_before + time.perf_counter() - run_start
        if ctx.is_main:
            meta = {**meta_base, "epochs_done": epoch + 1, "steps_done": step, "wall_seconds": wall,
                    "metrics": {k: v for k, v in record.items()}}
            improved = not math.isnan(metric) and metric > best
            if improved or val_store is None:
                best = metric if not math.isnan(metric) else best
                best_epoch = epoch + 1
                atomic_torch_save(checkpoint_dict(model, config.to_dict(), {**meta, "best_epoch": epoch + 1,
                                                                           "selected_on": selected_on}), out / BEST)
            ckpt = checkpoint_dict(model, config.to_dict(), meta)
            if config.keep_epoch_checkpoints:  # the weights and card of last.pt, without the training state
                atomic_torch_save(ckpt, out / f"epoch_{epoch + 1}.pt")
            ckpt["train_state"] = {
                "optimizer": optimizer.state_dict(), "scheduler": plateau.state_dict(),
                "rng": _rng_state(rng, gen), "epoch_rng": json.dumps(epoch_rng.bit_generator.state),
                "epoch": epoch + 1, "step": step, "best": best, "history": json.dumps(history),
                "best_epoch": best_epoch, "selected_on": selected_on,
                "wall_seconds": wall,
            }
            atomic_torch_save(ckpt, last_path)
            _write_metrics_csv(out / "metrics.csv", history)
            save_curve_pngs(out, history)
        ctx.barrier()
        yield {"kind": "epoch", **record, "best": best, "improved": metric >= best}
        if stopped:
            break
    done = {"kind": "done", "stopped": stopped, "best": best, "out_dir": str(out), "history": history,
            "best_path": str(out / BEST), "best_saved": (out / BEST).is_file(), "best_epoch": best_epoch,
            "selected_on": None if val_store is None else selected_on,
            "wall_seconds": wall_before + time.perf_counter() - run_start}
    yield {**done, "summary": done_summary(done)}


def selection_metric(summary: dict) -> tuple[str, float]:
    """(name, value) of the validation metric that picks ``best.pt`` (higher is better): the per-patient Dice,
    or the slice Dice when no validation patient has tumour (the per-patient Dice is then undefined)."""
    for name in (SELECTION_METRIC, FALLBACK_SELECTION_METRIC):
        value = summary.get(name, float("nan"))
        if isinstance(value, float) and math.isfinite(value):
            return name, value
    return SELECTION_METRIC, float("nan")


def done_summary(done: dict) -> str:
    """One true sentence about a finished run's checkpoints, for the CLI and the dock."""
    out = done["out_dir"]
    if not done["best_saved"]:
        return f"no epoch completed, so no checkpoint was written to {out}"
    if done["selected_on"] is None:
        return f"no validation patients: {done['best_path']} holds the last epoch's weights; checkpoints in {out}"
    if done["selected_on"] != SELECTION_METRIC:
        return (f"the validation patients have no tumour, so best.pt was selected on validation "
                f"{done['selected_on']} {done['best']:.4f} (epoch {done['best_epoch']}); checkpoints in {out}")
    return f"best val per-patient Dice {done['best']:.4f} (epoch {done['best_epoch']}); checkpoints in {out}"


def _run_checkpoints(out: Path) -> list[Path]:
    return sorted(p for p in out.glob("*.pt") if p.is_file() or p.is_symlink()) if out.is_dir() else []


def check_run_folder(out_dir: str | os.PathLike, *, resume: bool = False, overwrite: bool = False) -> None:
    """Refuse a new run in a folder that holds checkpoints (``*.pt``, e.g. a copied shipped model) unless
    ``overwrite``; refuse ``resume`` together with ``overwrite``. Raises ``FileExistsError`` / ``ValueError``."""
    out = Path(out_dir)
    if resume and overwrite:
        raise ValueError("resume continues the run in the folder and overwrite replaces it; choose one.")
    if out.exists() and not out.is_dir():
        raise FileExistsError(f"{out}: exists and is not a folder; choose another run folder.")
    found = _run_checkpoints(out)
    if found and not resume and not overwrite:
        names = ", ".join(p.name for p in found[:4]) + (", ..." if len(found) > 4 else "")
        raise FileExistsError(f"{out} already holds checkpoints ({names}); resume that run (--resume), replace "
                              "them (--overwrite) or choose another run folder.")


def read_resume_state(last_path: Path) -> tuple[dict, TrainConfig]:
    """The checkpoint and saved config of a run to resume; refuses files without a training state."""
    if not last_path.is_file():
        raise FileNotFoundError(f"cannot resume: {last_path} does not exist")
    state = read_checkpoint(last_path)
    ts, meta = state.get("train_state"), state.get("meta")
    if not isinstance(ts, dict) or not isinstance(meta, dict) or not isinstance(meta.get("split"), dict):
        raise CheckpointError(
            f"{last_path}: cannot resume: it holds no training state (optimiser, epoch, split); it is a model-only "
            "checkpoint such as a copied best.pt. Start a new run from its weights with --init-weights instead.")
    try:
        saved = TrainConfig.from_dict(state.get("config", {}))
        saved.validate()
    except (TypeError, ValueError) as err:
        raise CheckpointError(f"{last_path}: cannot resume: its saved config is invalid ({err}).") from err
    return state, saved


def _write_metrics_csv(path: Path, history: list[dict]) -> None:
    keys: list[str] = []
    for h in history:
        keys += [k for k in h if k not in keys]
    atomic_write_csv(path, history, keys)
