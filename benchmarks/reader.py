"""Reader benchmark: time to open the largest patient with ``io.load_patient`` and with the napari reader.

For each method the first run is "cold-ish" (the patient's files are first dropped from the page
cache with ``posix_fadvise(DONTNEED)``, which works without root for files nobody is writing),
then the median of ``--repeats`` warm runs. Without the real data a phantom patient of 88 slices
is written to a temporary folder.

    python benchmarks/reader.py
    python benchmarks/reader.py --repeats 2 --phantom --max-slices 8   # smoke run
"""

from __future__ import annotations

import argparse
import os
import statistics
import tempfile
import time
from pathlib import Path

from _common import (
    PHANTOM_SLICES,
    add_common_args,
    folders_by_size,
    machine_facts,
    print_machine_facts,
    print_table,
    real_data_available,
    write_json,
)
from napari_lgg_seg import _reader, io


def drop_page_cache(folder: Path) -> bool:
    """Ask the kernel to forget the cached pages of the folder's files; False where unsupported."""
    if not hasattr(os, "posix_fadvise"):
        return False
    for entry in os.scandir(folder):
        if entry.is_file():
            fd = os.open(entry.path, os.O_RDONLY)
            try:
                os.posix_fadvise(fd, 0, 0, os.POSIX_FADV_DONTNEED)
            finally:
                os.close(fd)
    return True


def open_with_io(folder: Path) -> int:
    patient = io.load_patient(folder)
    return patient.num_slices


def open_with_napari_reader(folder: Path) -> int:
    reader = _reader.napari_get_reader(str(folder))
    if reader is None:
        raise RuntimeError(f"the napari reader does not accept {folder}")
    layers = reader(str(folder))
    return int(layers[0][0].shape[0])


METHODS = {"io.load_patient": open_with_io, "napari reader": open_with_napari_reader}


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--repeats", type=int, default=5, help="warm runs per method (median)")
    parser.add_argument("--max-slices", type=int, default=None, help="slices of the phantom (default 88)")
    parser.add_argument("--patient", type=Path, default=None, help="a patient folder (default: the largest)")
    args = parser.parse_args(argv)
    facts = machine_facts()
    print_machine_facts(facts)

    tmp = None
    if args.patient is not None:
        folder, note = args.patient, f"--patient {args.patient}"
    elif real_data_available(args.data, args.phantom):
        count, folder = folders_by_size(args.data)[-1]
        note = f"largest real patient in {args.data}"
    else:
        from napari_lgg_seg.sample import write_phantom_dataset

        tmp = tempfile.TemporaryDirectory(prefix="lgg-reader-bench-")
        slices = args.max_slices or PHANTOM_SLICES[1]
        folder = write_phantom_dataset(tmp.name, n_patients=1, n_slices=slices, size=args.phantom_size)[0]
        why = "forced by --phantom" if args.phantom else f"{args.data} not found"
        note = f"phantom patient written to a temporary folder ({why})"
    files = [e for e in os.scandir(folder) if e.is_file()]
    size_mib = sum(e.stat().st_size for e in files) / 2 ** 20
    print(f"Patient: {Path(folder).name} ({note}); {len(files)} files, {size_mib:.1f} MiB\n")

    import tifffile  # noqa: F401  (imported before timing: "first" measures reading, not importing)

    results, rows = {}, []
    try:
        for name, fn in METHODS.items():
            dropped = drop_page_cache(Path(folder))
            t0 = time.perf_counter()
            slices = fn(Path(folder))
            first = time.perf_counter() - t0
            warm = []
            for _ in range(args.repeats):
                t0 = time.perf_counter()
                fn(Path(folder))
                warm.append(time.perf_counter() - t0)
            med = statistics.median(warm) if warm else float("nan")
            results[name] = {"slices": slices, "first_s": first, "page_cache_dropped": dropped,
                             "warm_median_s": med, "warm_s": warm}
            rows.append([name, slices, first, med, min(warm) if warm else None,
                         size_mib / med if warm else None])
    finally:
        if tmp is not None:
            tmp.cleanup()
    print_table(["method", "slices", "first (cold-ish) s", f"warm median of {args.repeats} s", "warm min s",
                 "warm MiB/s"], rows, title="Opening the patient", digits=3)
    print("  first: after dropping the files from the page cache (posix_fadvise DONTNEED); not a reboot-cold read")
    print("  warm: files in the page cache; the napari reader adds the layer tuples on top of io.load_patient.\n")
    payload = {"benchmark": "reader", "machine": facts, "patient": Path(folder).name, "source": note,
               "files": len(files), "mib": size_mib, "methods": results}
    write_json(args.json, payload)
    return payload


if __name__ == "__main__":
    main()
