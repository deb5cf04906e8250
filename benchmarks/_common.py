"""Helpers shared by the benchmark scripts: data selection, machine facts, memory sampling, tables.

The benchmarks are scripts, not tests: they print numbers (and write JSON with ``--json``).
"""

from __future__ import annotations

import json
import os
import platform
import resource
import statistics
import sys
import tempfile
import threading
import time
from dataclasses import dataclass
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[1]
DEFAULT_DATA = Path(os.environ.get("LGG_DATA", REPO.parent / "shared" / "lgg" / "kaggle_3m"))
PHANTOM_SLICES = (20, 88)  # smallest and largest slice counts of the real data set (per the issue)


@dataclass
class Case:
    """One patient volume to benchmark on (real or synthetic)."""

    patient_id: str
    images: np.ndarray  # (Z, H, W, 3) uint8
    masks: np.ndarray | None  # (Z, H, W) {0, 1}
    folder: str | None = None  # None for phantoms

    @property
    def num_slices(self) -> int:
        return int(self.images.shape[0])


def add_common_args(parser, *, json_option: bool = True) -> None:
    """--data, --threads, --json (shared by every benchmark)."""
    parser.add_argument("--data", type=Path, default=DEFAULT_DATA,
                        help=f"LGG dataset root (default: {DEFAULT_DATA}; env LGG_DATA overrides); synthetic "
                             "phantoms are used when it does not exist")
    parser.add_argument("--phantom", action="store_true", help="use synthetic phantoms even if the data exists")
    parser.add_argument("--phantom-size", type=int, default=256,
                        help="height and width of the phantoms (smaller: faster smoke runs)")
    parser.add_argument("--threads", type=int, default=0, help="torch.set_num_threads (0: torch's default)")
    if json_option:
        parser.add_argument("--json", type=Path, default=None, metavar="PATH", help="also write the results as JSON")


def apply_threads(threads: int) -> None:
    """Set the torch intra-op thread count when asked."""
    if threads:
        import torch

        torch.set_num_threads(threads)


def real_data_available(data: Path, phantom: bool = False) -> bool:
    """True when ``data`` is a dataset root with patient folders (and phantoms were not forced)."""
    if phantom:
        return False
    from napari_lgg_seg.io import find_patient_folders

    return Path(data).is_dir() and bool(find_patient_folders(data))


def _count_slices(folder: Path) -> int:
    from napari_lgg_seg.io import parse_slice_name

    count = 0
    for entry in os.scandir(folder):
        parsed = parse_slice_name(entry.name)
        if parsed is not None and not parsed.is_mask:
            count += 1
    return count


def folders_by_size(data: Path) -> list[tuple[int, Path]]:
    """(slice count, folder) of every patient under ``data``, smallest first (ties by name)."""
    from napari_lgg_seg.io import find_patient_folders

    return sorted((_count_slices(f), f) for f in find_patient_folders(data))


def pick_spread(items: list, extra: int) -> list:
    """The first and last item plus ``extra`` more evenly spaced in between (order kept)."""
    if len(items) <= 2 + extra:
        return list(items)
    chosen = {0, len(items) - 1}
    inner = np.linspace(0, len(items) - 1, extra + 2)[1:-1]
    for x in inner:
        i = int(round(x))
        while i in chosen:
            i += 1
        chosen.add(i)
    return [items[i] for i in sorted(chosen)]


def cap_slices(images: np.ndarray, masks: np.ndarray | None, max_slices: int | None):
    """A centred run of at most ``max_slices`` slices (the middle of a head has brain in it)."""
    if not max_slices or images.shape[0] <= max_slices:
        return images, masks
    start = (images.shape[0] - max_slices) // 2
    sl = slice(start, start + max_slices)
    return images[sl], (masks[sl] if masks is not None else None)


def phantom_cases(n: int, max_slices: int | None = None, size: int = 256) -> list[Case]:
    """``n`` phantoms from 20 to 88 slices (the real data's range), capped at ``max_slices``."""
    from napari_lgg_seg.sample import make_phantom

    counts = [PHANTOM_SLICES[0]] if n < 2 else np.linspace(*PHANTOM_SLICES, n).round().astype(int).tolist()
    cases = []
    for i, z in enumerate(counts):
        z = int(min(z, max_slices)) if max_slices else int(z)
        images, masks = make_phantom(n_slices=z, size=size, seed=i)
        cases.append(Case(f"PHANTOM_{i:02d}_{z}sl", images, masks))
    return cases


def load_cases(data: Path, extra: int, max_slices: int | None = None, phantom: bool = False,
               phantom_size: int = 256) -> tuple[list[Case], str]:
    """Smallest and largest patient by slice count plus ``extra`` more; phantoms when data is absent.

    Returns the cases and a one-line description of where they came from.
    """
    if not real_data_available(data, phantom):
        why = "forced by --phantom" if phantom else f"{data} not found"
        note = f"synthetic phantoms ({why}); Dice vs truth is on phantoms"
        return phantom_cases(2 + extra, max_slices, phantom_size), note
    from napari_lgg_seg.io import load_patient

    chosen = pick_spread(folders_by_size(data), extra)
    cases = []
    for _, folder in chosen:
        patient = load_patient(folder)
        images, masks = cap_slices(patient.images, patient.masks, max_slices)
        cases.append(Case(patient.patient_id, images, masks, str(folder)))
    capped = f", capped at {max_slices} slices" if max_slices else ""
    return cases, f"real patients from {data}{capped}"


# ---------------------------------------------------------------- weights


def load_weights(weights: Path | None, seed: int = 0):
    """(UNet in eval mode on CPU, description, trained?, the slice size it was trained at) from --weights, the
    shipped model, or random init."""
    import torch

    from napari_lgg_seg.model import DATASET_SLICE_SIZE, UNet, default_model_path, load_model

    if weights is not None:
        loaded = load_model(weights)
        return loaded.model.float().eval(), f"--weights {weights}", True, loaded.training_size
    default = default_model_path()
    if default is not None:
        loaded = load_model(default)
        return loaded.model.float().eval(), f"shipped default model {default}", True, loaded.training_size
    torch.manual_seed(seed)
    return (UNet().eval(), "RANDOMLY INITIALISED full-size U-Net (no shipped model, no --weights)", False,
            DATASET_SLICE_SIZE)


# ---------------------------------------------------------------- machine facts


def cpu_model() -> str:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def cpu_flags() -> set[str]:
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


ISA_CAP_VARIABLES = ("ONEDNN_MAX_CPU_ISA", "ATEN_CPU_CAPABILITY", "MKL_ENABLE_INSTRUCTIONS")


def machine_facts() -> dict:
    """CPU, cores, torch threads, bf16 support, allocator (as the performance issue asks)."""
    import torch

    from napari_lgg_seg.inference import cpu_has_fast_bf16

    flags = cpu_flags()
    simd = [f for f in ("avx2", "avx512f", "avx512_bf16", "amx_bf16", "amx_tile") if f in flags]
    try:
        usable = len(os.sched_getaffinity(0))
    except AttributeError:
        usable = os.cpu_count()
    preload = os.environ.get("LD_PRELOAD", "")
    return {
        "cpu": cpu_model(),
        "cpu_count": os.cpu_count(),
        "usable_cores": usable,
        "torch_threads": torch.get_num_threads(),
        "torch": torch.__version__,
        "python": platform.python_version(),
        "simd_flags": simd,
        "cpu_has_fast_bf16": bool(cpu_has_fast_bf16()),
        "tcmalloc_preloaded": "tcmalloc" in preload,
        # ISA caps that make this CPU run an older one's code paths (e.g. AVX2-only): say so next to every figure
        "isa_caps": {k: os.environ[k] for k in ISA_CAP_VARIABLES if os.environ.get(k)},
        "ld_preload": preload,
        "load_average_1min": os.getloadavg()[0] if hasattr(os, "getloadavg") else None,
        "cuda": torch.cuda.get_device_name(0) if torch.cuda.is_available() else None,
    }


def print_machine_facts(facts: dict) -> None:
    print("Machine")
    print(f"  CPU:                 {facts['cpu']} ({facts['usable_cores']} usable of {facts['cpu_count']} cores; "
          f"SIMD: {', '.join(facts['simd_flags']) or 'unknown'})")
    print(f"  torch:               {facts['torch']}, {facts['torch_threads']} intra-op threads")
    print(f"  cpu_has_fast_bf16(): {facts['cpu_has_fast_bf16']}")
    if facts.get("isa_caps"):
        caps = " ".join(f"{k}={v}" for k, v in facts["isa_caps"].items())
        print(f"  ISA capped:          {caps} (this CPU runs the capped ISA's code paths)")
    alloc = "tcmalloc (LD_PRELOAD)" if facts["tcmalloc_preloaded"] else "glibc malloc (tcmalloc NOT preloaded)"
    print(f"  allocator:           {alloc}")
    if facts["load_average_1min"] is not None:
        busy = "  <- other work is running: timings are unreliable" if facts["load_average_1min"] > 0.5 else ""
        print(f"  load average (1 min): {facts['load_average_1min']:.2f}{busy}")
    if facts["cuda"]:
        print(f"  CUDA device:         {facts['cuda']}")
    print()


# ---------------------------------------------------------------- memory


def _rss_bytes() -> int | None:
    try:
        with open("/proc/self/statm") as f:
            return int(f.read().split()[1]) * os.sysconf("SC_PAGE_SIZE")
    except (OSError, ValueError, IndexError):
        return None


def max_rss_mib() -> float:
    """Peak resident memory of this process so far (``ru_maxrss``), MiB."""
    peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
    return peak / (1024 * 1024) if sys.platform == "darwin" else peak / 1024


class RssSampler:
    """Samples this process's resident memory in a thread; ``peak_delta_mib`` is the peak above the start.

    ``ru_maxrss`` only ever grows over the whole process, so it cannot tell two code paths apart;
    sampling /proc/self/statm can (it misses spikes shorter than ``interval``).
    """

    def __init__(self, interval: float = 0.002) -> None:
        self.interval = interval
        self.start = self.peak = 0
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def __enter__(self) -> RssSampler:
        self.start = self.peak = _rss_bytes() or 0
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()
        return self

    def _run(self) -> None:
        while not self._stop.is_set():
            rss = _rss_bytes()
            if rss is not None and rss > self.peak:
                self.peak = rss
            time.sleep(self.interval)

    def __exit__(self, *exc) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join()
        rss = _rss_bytes()
        if rss is not None and rss > self.peak:
            self.peak = rss

    @property
    def peak_delta_mib(self) -> float:
        return (self.peak - self.start) / (1024 * 1024)

    @property
    def peak_mib(self) -> float:
        return self.peak / (1024 * 1024)


# ---------------------------------------------------------------- matmul peak


def matmul_gflops(dtype_name: str = "float32", n: int = 2048, seconds: float = 2.0, device: str = "cpu") -> float:
    """Measured GFLOP/s of an n x n x n matmul loop (2 n^3 FLOPs each) in the given dtype."""
    import torch

    dtype = {"float32": torch.float32, "bfloat16": torch.bfloat16, "float16": torch.float16}[dtype_name]
    gen = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=gen).to(device=device, dtype=dtype)
    out = torch.empty(n, n, device=device, dtype=dtype)

    def sync() -> None:
        if device.startswith("cuda"):
            torch.cuda.synchronize()

    torch.matmul(a, b, out=out)  # warm-up
    sync()
    iters, t0 = 0, time.perf_counter()
    while True:
        torch.matmul(a, b, out=out)
        iters += 1
        sync()
        elapsed = time.perf_counter() - t0
        if elapsed >= seconds and iters >= 2 or elapsed >= 4 * seconds:
            break
    return 2.0 * n ** 3 * iters / elapsed / 1e9


# ---------------------------------------------------------------- output


def median(values: list[float]) -> float:
    return float(statistics.median(values)) if values else float("nan")


def fmt(value, digits: int = 2) -> str:
    if value is None:
        return "-"
    if isinstance(value, float):
        if value != value:
            return "n/a"
        return f"{value:.{digits}f}"
    return str(value)


def print_table(headers: list[str], rows: list[list], title: str | None = None, digits: int = 2) -> None:
    """A plain, aligned text table (numbers right-aligned; floats with ``digits`` decimals)."""
    cells = [[fmt(c, digits) for c in row] for row in rows]
    widths = [max(len(h), *(len(r[i]) for r in cells)) if cells else len(h) for i, h in enumerate(headers)]
    if title:
        print(title)
    print("  " + "  ".join(h.ljust(w) if i == 0 else h.rjust(w) for i, (h, w) in enumerate(zip(headers, widths))))
    print("  " + "  ".join("-" * w for w in widths))
    for row in cells:
        print("  " + "  ".join(c.ljust(w) if i == 0 else c.rjust(w) for i, (c, w) in enumerate(zip(row, widths))))
    print()


def write_json(path: Path | None, payload: dict) -> None:
    """Write the results (and print where) when ``--json`` was given."""
    if path is None:
        return
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text(json.dumps(payload, indent=2, default=_json_default))
    print(f"results written to {path}")


def _json_default(obj):
    if isinstance(obj, (np.integer, np.floating)):
        return obj.item()
    if isinstance(obj, np.ndarray):
        return obj.tolist()
    if isinstance(obj, Path):
        return str(obj)
    return str(obj)


# ---------------------------------------------------------------- Qt event loop (gui.py, workflow.py)


def isolated_session(prefix: str) -> tuple[tempfile.TemporaryDirectory, Path]:
    """A temporary folder for one GUI benchmark session; the plugin's autosaves and settings and napari's own settings
    (reader preferences) are pointed into it, so nothing of the user's is read or written."""
    tmpdir = tempfile.TemporaryDirectory(prefix=prefix)
    tmp = Path(tmpdir.name)
    os.environ["LGG_SEG_RECOVERY_DIR"] = str(tmp / "recovery")
    os.environ["LGG_SEG_CONFIG_DIR"] = str(tmp / "config")
    os.environ["NAPARI_CONFIG"] = str(tmp / "napari_settings.yaml")
    return tmpdir, tmp


def print_session_header(facts: dict, notes: list[tuple[str, str]], interval_ms: int) -> None:
    """The machine facts, what the session runs on (``(label, text)`` lines) and the heartbeat interval."""
    print_machine_facts(facts)
    width = max(len(label) for label, _ in notes) + 1
    for label, text in notes:
        print(f"{label + ':':<{width}} {text}")
    print(f"Heartbeat every {interval_ms} ms\n", flush=True)


def require_display(parser, script: str) -> None:
    """Exit with a hint when there is no X server (napari's canvas needs OpenGL; offscreen has none)."""
    if not os.environ.get("DISPLAY") and not os.environ.get("WAYLAND_DISPLAY") \
            and os.environ.get("QT_QPA_PLATFORM", "") not in ("offscreen", "minimal"):
        parser.exit(2, f"{script} needs an X server: run it as `xvfb-run -a python benchmarks/{script} ...`\n")


class Heartbeat:
    """A precise QTimer that records when it fires; gaps between ticks = event-loop stalls."""

    def __init__(self, interval_ms: int) -> None:
        from qtpy.QtCore import Qt, QTimer

        self.interval_ms = interval_ms
        self.timer = QTimer()
        self.timer.setTimerType(Qt.TimerType.PreciseTimer)
        self.timer.setInterval(interval_ms)
        self.timer.timeout.connect(self._tick)
        self.ticks: list[float] = []

    def _tick(self) -> None:
        self.ticks.append(time.perf_counter())

    def start(self) -> None:
        self.ticks = [time.perf_counter()]
        self.timer.start()

    def stop(self) -> None:
        self.timer.stop()
        self.ticks.append(time.perf_counter())

    def summary(self) -> dict:
        gaps = np.diff(self.ticks) * 1000 if len(self.ticks) > 1 else np.zeros(1)
        return {"ticks": len(self.ticks) - 1, "duration_s": self.ticks[-1] - self.ticks[0],
                "max_gap_ms": float(gaps.max()), "p99_gap_ms": float(np.percentile(gaps, 99)),
                "median_gap_ms": float(np.median(gaps)), "gaps_over_100ms": int((gaps > 100).sum()),
                "gaps_over_250ms": int((gaps > 250).sum())}


def run_loop(until=None, timeout_s: float = 600.0, settle_s: float = 0.0) -> bool:
    """Run the Qt event loop until ``until()`` is true (then ``settle_s`` more) or the timeout; False on timeout."""
    from qtpy.QtCore import QEventLoop, QTimer

    loop = QEventLoop()
    state = {"done": False, "timed_out": False}

    def finish() -> None:
        loop.quit()

    def poll() -> None:
        if state["done"] or until is None:
            return
        if until():
            state["done"] = True
            QTimer.singleShot(int(settle_s * 1000), finish)

    poller = QTimer()
    poller.setInterval(20)
    poller.timeout.connect(poll)
    poller.start()

    def on_timeout() -> None:
        state["timed_out"] = until is not None and not state["done"]
        loop.quit()

    deadline = QTimer()
    deadline.setSingleShot(True)
    deadline.timeout.connect(on_timeout)
    deadline.start(int((settle_s if until is None else timeout_s) * 1000))
    loop.exec()
    poller.stop()
    deadline.stop()
    return not state["timed_out"]


def measure(name: str, heartbeat: Heartbeat, action, until=None, timeout_s: float = 600.0,
            settle_s: float = 0.5, quiet: bool = False) -> dict:
    """Start the heartbeat, run ``action()`` (on the GUI thread), spin the loop until ``until()``; stats."""
    heartbeat.start()
    t0 = time.perf_counter()
    note = ""
    if action is not None:
        action()
    finished = run_loop(until, timeout_s=timeout_s, settle_s=settle_s)
    elapsed = time.perf_counter() - t0
    heartbeat.stop()
    if not finished:
        note = f"TIMED OUT after {timeout_s:.0f} s"
    result = {"phase": name, "elapsed_s": elapsed, **heartbeat.summary(), "note": note}
    if not quiet:
        print(f"  {name}: {elapsed:.2f} s, longest stall {result['max_gap_ms']:.0f} ms {note}", flush=True)
    return result
