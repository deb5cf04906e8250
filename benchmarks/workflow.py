"""Correction-workflow benchmark: a scripted session of "Accept and next" in a real napari window.

Opens a dataset root of ``--patients`` real patients (symbolic links in a temporary folder to patients spread over
the slice counts of the data set) through the plugin's reader, which docks the patient browser; sets an export root
in the temporary folder; the first patient segments by itself when the root opens (automatic segmentation, on by
default, with the Segment dock's model), then, for every patient, the script only presses the
browser's Accept-and-next (export the tumour layer, open the next patient, segment it). Nothing is corrected: the
script measures what the plugin costs on top of the network.

Per patient it prints the seconds in all (from the click to the next patient being ready for the brush), the
network's seconds (the Segment dock's worker timing), the overhead (everything but the network: export, switching
patients, post-processing, result layers, event loop), the user actions, and the longest stall of the Qt event
loop (QTimer heartbeat, as in gui.py). Needs an X server; on a headless machine run it under ``xvfb-run -a``.

    xvfb-run -a python benchmarks/workflow.py --json benchmarks/results/workflow.json
    xvfb-run -a python benchmarks/workflow.py --phantom --phantom-size 64 --patients 3 --tiny-model  # smoke run
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

from _common import (
    PHANTOM_SLICES,
    Heartbeat,
    add_common_args,
    apply_threads,
    folders_by_size,
    isolated_session,
    machine_facts,
    measure,
    pick_spread,
    print_session_header,
    print_table,
    real_data_available,
    require_display,
    run_loop,
    write_json,
)


def prepare_root(args, tmp: Path) -> tuple[Path, str]:
    """A dataset root of ``--patients`` patients: links to real patients spread over the slice counts, or phantoms."""
    root = tmp / "dataset"
    if real_data_available(args.data, args.phantom):
        chosen = pick_spread(folders_by_size(args.data), max(args.patients - 2, 0))[:args.patients]
        root.mkdir()
        for _, folder in chosen:
            (root / folder.name).symlink_to(folder.resolve(), target_is_directory=True)
        counts = sorted(count for count, _ in chosen)
        return root, (f"{len(chosen)} real patients of {args.data} ({counts[0]}-{counts[-1]} slices, spread over "
                      "the slice counts)")
    from napari_lgg_seg.sample import write_phantom_dataset

    slices = args.max_slices or PHANTOM_SLICES[0]
    write_phantom_dataset(root, n_patients=args.patients, n_slices=slices, size=args.phantom_size)
    return root, f"{args.patients} phantom patients of {slices} slices (forced by --phantom)"


def main(argv: list[str] | None = None) -> dict | None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--patients", type=int, default=10, help="patients to accept")
    parser.add_argument("--max-slices", type=int, default=None, help="slices of each phantom patient (default 20)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="checkpoint for the Segment dock (default: shipped model, else a random full-size one)")
    parser.add_argument("--tiny-model", action="store_true", help="use a tiny random U-Net (smoke runs only)")
    parser.add_argument("--interval-ms", type=int, default=10, help="heartbeat interval")
    parser.add_argument("--timeout", type=float, default=600.0, help="seconds allowed per patient")
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    require_display(parser, "workflow.py")
    if not args.phantom and not real_data_available(args.data):
        print(f"workflow.py: no LGG data set at {args.data} (set --data or LGG_DATA); skipped. "
              "`--phantom` runs a smoke test on synthetic patients.")
        return None
    if args.patients < 2:
        parser.error("--patients must be at least 2")

    facts = machine_facts()
    tmpdir, tmp = isolated_session("lgg-workflow-bench-")

    import napari

    from gui import prepare_checkpoint
    from napari_lgg_seg.widgets.segment import segment_dock

    root, root_note = prepare_root(args, tmp)
    checkpoint, model_note = prepare_checkpoint(args, tmp)
    print_session_header(facts, [("Patients", root_note), ("Model", model_note)], args.interval_ms)

    viewer = napari.Viewer(show=True)
    heartbeat = Heartbeat(args.interval_ms)
    actions: list[str] = []
    cycles: list[dict] = []
    try:
        run_loop(None, settle_s=1.0)  # let the window appear
        # the Segment dock with the benchmark's model, docked before the root opens (a user's last model is
        # remembered the same way); opening the root segments its first patient by itself
        seg = segment_dock(viewer)
        seg.ask = _never_asked
        if not seg.add_checkpoint(checkpoint):
            raise RuntimeError(f"the Segment dock refused {checkpoint}: {seg.model_label.value}")
        ready: list[tuple[str, float]] = []  # (patient id, when it was ready for the brush)
        seg.segmentation_done.connect(lambda pid, layer, message: ready.append((pid, time.perf_counter())))
        actions.append("open the dataset root")
        opened = time.perf_counter()
        opening = measure("open the dataset root; its first patient segments by itself (napari/vispy start-up)",
                          heartbeat, lambda: viewer.open(str(root), plugin="napari-lgg-seg"),
                          until=lambda: bool(ready) and not seg.running, timeout_s=args.timeout, settle_s=0.0)
        if not ready:
            raise RuntimeError(f"opening {root} did not segment its first patient: {seg.status_label.value}")
        opening["first_patient_ready_s"] = ready[0][1] - opened
        opening["network_s"] = getattr(seg, "last_timing", {}).get("network_s", 0.0)
        print(f"    first patient ready for the brush {opening['first_patient_ready_s']:.2f} s after the open "
              f"(network {opening['network_s']:.2f} s)", flush=True)
        _, browser = viewer.window.add_plugin_dock_widget("napari-lgg-seg", "Patient browser")
        if browser.root is None or Path(browser.root).resolve() != root.resolve():
            raise RuntimeError(f"the patient browser did not come up on {root}")
        browser.ask = _never_asked
        actions.append("choose the export root")
        browser.export_root.value = tmp / "export"
        if not browser.auto_segment.value:
            raise RuntimeError("automatic segmentation is off in a fresh session (it is on by default)")

        def cycle(label: str, action, action_name: str) -> dict:
            before, pid_before = len(ready), browser.current_patient_id
            clock: dict = {}

            def act() -> None:
                actions.append(action_name)
                clock["start"] = time.perf_counter()
                action()
                clock["handler"] = time.perf_counter()

            def finished() -> bool:
                if browser.exporting:  # Accept and next writes the export in a worker, then moves on
                    return False
                clock.setdefault("exported", time.perf_counter())  # (20-ms polling)
                if browser.current_patient_id == pid_before:  # the next patient opens in a later turn, if any
                    return browser.next_not_exported_index() is None  # the last patient: accepted, nothing left to open
                return len(ready) > before and not seg.running

            result = measure(label, heartbeat, act, until=finished, timeout_s=args.timeout, settle_s=0.0,
                             quiet=True)
            segmented = len(ready) > before
            end = ready[-1][1] if segmented else clock.get("exported", clock["handler"])
            timing = getattr(seg, "last_timing", {}) if segmented else {}  # {} before the dock timed its runs
            result.update({"patient": browser.current_patient_id if segmented else None,
                           "slices": _slices(viewer, browser.current_patient_id) if segmented else 0,
                           "total_s": end - clock["start"], "handler_s": clock["handler"] - clock["start"],
                           "network_s": timing.get("network_s", 0.0),
                           "postprocess_s": timing.get("postprocess_s", 0.0)})
            result["overhead_s"] = result["total_s"] - result["network_s"]
            print(f"  {label}: {result['total_s']:.2f} s (network {result['network_s']:.2f} s, overhead "
                  f"{result['overhead_s']:.2f} s), longest stall {result['max_gap_ms']:.0f} ms {result['note']}",
                  flush=True)
            return result

        for i in range(len(browser.folders)):
            pid = browser.current_patient_id
            cycles.append(cycle(f"accept patient {i + 1} ({pid}) and next", browser.accept_button.native.click,
                                "accept and next"))
            if cycles[-1]["note"]:
                break
        exported = sorted(p.name for p in (tmp / "export").iterdir() if p.is_dir()) \
            if (tmp / "export").is_dir() else []
    finally:
        viewer.close()

    n = len(exported)
    per_patient = [c for c in cycles if not c["note"]]
    total = sum(c["total_s"] for c in per_patient)
    network = sum(c["network_s"] for c in per_patient)
    patient_actions = [a for a in actions if a == "accept and next"]
    summary = {
        "patients_exported": n,
        "seconds_per_patient": total / max(n, 1),
        "segmentation_seconds_per_patient": network / max(n, 1),
        "overhead_seconds_per_patient": (total - network) / max(n, 1),
        "postprocess_seconds_per_patient": sum(c["postprocess_s"] for c in per_patient) / max(n, 1),
        "actions_per_patient": len(patient_actions) / max(n, 1),
        "accept_and_next_per_patient": patient_actions.count("accept and next") / max(n, 1),
        "setup_actions": [a for a in actions if a not in patient_actions],
        "longest_stall_ms": max(c["max_gap_ms"] for c in cycles),
        "gaps_over_100ms": sum(c["gaps_over_100ms"] for c in cycles),
        "open_root_stall_ms": opening["max_gap_ms"],
    }
    print()
    print_table(["step", "slices segmented", "total s", "network s", "post-proc s", "click handler s", "overhead s",
                 "max stall ms", ">100 ms"],
                [[c["phase"], c["slices"], c["total_s"], c["network_s"], c["postprocess_s"], c["handler_s"],
                  c["overhead_s"], c["max_gap_ms"], c["gaps_over_100ms"]] for c in cycles],
                title="Accept-and-next session (each step: from the action to the next patient ready for the brush)")
    print(f"  patients exported:           {n} of {len(browser.folders)}")
    print(f"  seconds per patient:         {summary['seconds_per_patient']:.2f}")
    print(f"  segmentation (network):      {summary['segmentation_seconds_per_patient']:.2f} s per patient")
    print(f"  overhead (all but network):  {summary['overhead_seconds_per_patient']:.2f} s per patient "
          f"(of which post-processing in the worker {summary['postprocess_seconds_per_patient']:.2f} s)")
    print(f"  actions per patient:         {summary['actions_per_patient']:.2f} ({len(patient_actions)} for {n}: "
          f"the first patient segments when the root opens, then only Accept and next; setup: "
          f"{', '.join(summary['setup_actions'])})")
    print(f"  longest GUI stall:           {summary['longest_stall_ms']:.0f} ms "
          f"({summary['gaps_over_100ms']} gaps over 100 ms); opening the root and segmenting its first patient "
          f"(one-time napari start-up): {summary['open_root_stall_ms']:.0f} ms, first patient ready "
          f"{opening['first_patient_ready_s']:.2f} s after the open")
    print("  overhead: export, switching patients, post-processing, result layers and event-loop turns. Target:")
    print("  <= 1 action and <= 1 s of overhead per patient on top of segmentation.")
    for c in cycles:
        if c["note"]:
            print(f"  {c['phase']}: {c['note']}")
    tmpdir.cleanup()
    payload = {"benchmark": "workflow", "machine": facts, "patients_source": root_note, "model": model_note,
               "interval_ms": args.interval_ms, "summary": summary, "opening": opening, "steps": cycles,
               "actions": actions, "exported": exported,
               "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    write_json(args.json, payload)
    return payload


def _never_asked(title: str, text: str) -> bool:
    raise RuntimeError(f"the session was asked a question: {title}: {text}")


def _slices(viewer, patient_id: str | None) -> int:
    for layer in viewer.layers:
        meta = layer.metadata or {}
        if meta.get("lgg_patient_id") == patient_id and meta.get("lgg_channel"):
            return int(layer.data.shape[0])
    return 0


if __name__ == "__main__":
    main()
