"""GUI responsiveness benchmark: the longest stall of the Qt event loop while the plugin works.

Opens a real napari viewer, opens a patient through the plugin's reader (the largest real patient,
or a phantom patient folder written to a temporary folder), docks the Segment widget, selects a
checkpoint and clicks Segment, then docks the Train widget and runs a short training. A QTimer
heartbeat (every ``--interval-ms``, precise timer) records the gaps between its ticks; a gap much
longer than the interval means the event loop (and so the whole window) was frozen that long.
Prints, per phase, the max gap (the longest stall), the 99th percentile and the number of gaps
over 100 ms. Needs an X server; on a headless machine run it under ``xvfb-run -a``.

    xvfb-run -a python benchmarks/gui.py
    xvfb-run -a python benchmarks/gui.py --phantom --phantom-size 64 --max-slices 8 --tiny-model \\
        --train-steps 1 --train-batch 2 --train-slices 8 --idle-seconds 0.5   # smoke run
"""

from __future__ import annotations

import argparse
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
    print_session_header,
    print_table,
    real_data_available,
    require_display,
    run_loop,
    write_json,
)

TINY = {"features": [4, 8, 16, 32], "bottleneck": 32}


def prepare_patient(args, tmp: Path) -> tuple[Path, str]:
    """The patient folder to open (its parent is the dataset root the browser phases step through)."""
    if args.patient is not None:
        return args.patient, f"--patient {args.patient}"
    if real_data_available(args.data, args.phantom):
        count, folder = folders_by_size(args.data)[-1]
        return folder, f"largest real patient ({count} slices) in {args.data}"
    from napari_lgg_seg.sample import write_phantom_dataset

    slices = args.max_slices or PHANTOM_SLICES[1]
    folder = write_phantom_dataset(tmp / "patients", n_patients=max(2, args.switches // 2 + 1), n_slices=slices,
                                   size=args.phantom_size)[0]
    why = "forced by --phantom" if args.phantom else f"{args.data} not found"
    return folder, f"phantom patient of {slices} slices ({why})"


def prepare_checkpoint(args, tmp: Path) -> tuple[Path, str]:
    from napari_lgg_seg.model import ModelConfig, UNet, default_model_path, save_checkpoint

    if args.weights is not None:
        return args.weights, f"--weights {args.weights}"
    if args.tiny_model:
        import torch

        torch.manual_seed(0)
        path = tmp / "tiny_random.pt"
        save_checkpoint(path, UNet(ModelConfig.from_dict(TINY)), config={"note": "benchmark tiny model"})
        return path, "TINY random-weight U-Net (smoke run: stalls are not representative)"
    default = default_model_path()
    if default is not None:
        return default, f"shipped default model {default}"
    import torch

    torch.manual_seed(0)
    path = tmp / "random_full_size.pt"
    save_checkpoint(path, UNet(), config={"note": "benchmark random model"})
    return path, "randomly initialised full-size U-Net (no shipped model): same compute as a trained one"


def main(argv: list[str] | None = None) -> dict:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0],
                                     formatter_class=argparse.ArgumentDefaultsHelpFormatter)
    add_common_args(parser)
    parser.add_argument("--patient", type=Path, default=None, help="patient folder to open (default: the largest)")
    parser.add_argument("--max-slices", type=int, default=None, help="slices of the phantom patient (default 88)")
    parser.add_argument("--weights", type=Path, default=None,
                        help="checkpoint for the Segment dock (default: shipped model, else a random full-size one)")
    parser.add_argument("--tiny-model", action="store_true", help="use a tiny random U-Net (smoke runs only)")
    parser.add_argument("--interval-ms", type=int, default=10, help="heartbeat interval")
    parser.add_argument("--idle-seconds", type=float, default=2.0, help="length of the idle baseline")
    parser.add_argument("--segment-runs", type=int, default=2, help="Segment clicks (the first includes warm-up)")
    parser.add_argument("--thresholds", default="0.3,0.7,0.5",
                        help="threshold moves after segmenting (comma-separated; empty: none)")
    parser.add_argument("--switches", type=int, default=6,
                        help="patient switches in the patient browser (half forward, half back; 0: none)")
    parser.add_argument("--no-train", action="store_true", help="skip the training phase")
    parser.add_argument("--train-steps", type=int, default=10, help="steps of the short training run (1 epoch)")
    parser.add_argument("--train-batch", type=int, default=8)
    parser.add_argument("--train-slices", type=int, default=24, help="slices of each of the 3 phantom patients")
    parser.add_argument("--train-val", type=float, default=0.34, help="validation share (0.34: 1 of 3 patients)")
    parser.add_argument("--train-whole-slices", action="store_true", help="untick the 128-px crop option")
    parser.add_argument("--train-from", choices=("scratch", "checkpoint"), default="scratch",
                        help="train a new U-Net, or fine-tune the Segment dock's checkpoint")
    parser.add_argument("--timeout", type=float, default=1800.0, help="seconds allowed per phase")
    args = parser.parse_args(argv)
    apply_threads(args.threads)
    require_display(parser, "gui.py")

    facts = machine_facts()
    tmpdir, tmp = isolated_session("lgg-gui-bench-")

    import napari

    from napari_lgg_seg.widgets.segment import SegmentWidget

    folder, patient_note = prepare_patient(args, tmp)
    checkpoint, model_note = prepare_checkpoint(args, tmp)
    print_session_header(facts, [("Patient", f"{folder.name}: {patient_note}"), ("Model", model_note)],
                         args.interval_ms)

    viewer = napari.Viewer(show=True)
    phases: list[dict] = []
    heartbeat = Heartbeat(args.interval_ms)
    try:
        run_loop(None, settle_s=1.0)  # let the window appear
        phases.append(measure("idle viewer (baseline)", heartbeat, None, None, settle_s=args.idle_seconds))
        phases.append(measure("open patient (reader, on the GUI thread)", heartbeat,
                              lambda: viewer.open(str(folder), plugin="napari-lgg-seg"), settle_s=0.5))

        docked = []

        def dock_segment_widget() -> None:
            seg = SegmentWidget(viewer)
            seg.ask = lambda title, text: False  # never block on a dialog (e.g. an autosave recovery offer)
            viewer.window.add_dock_widget(seg, name="Segment tumour", area="right")
            docked.append(seg)

        phases.append(measure("dock the Segment widget (imports torch, loads the default model)", heartbeat,
                              dock_segment_widget, settle_s=0.5))  # and makes the patient's two spare layers
        seg = docked[0]
        phases.append(measure("load checkpoint (Segment dock, as its Checkpoint… button)", heartbeat,
                              lambda: seg.add_checkpoint(checkpoint, wait=False), until=lambda: not seg.running,
                              timeout_s=args.timeout, settle_s=0.2))
        if seg.loaded_model is None:
            raise RuntimeError(f"the checkpoint did not load: {seg.model_label.value}")
        if seg.current_patient() is None:
            raise RuntimeError("the Segment dock sees no patient after opening it")
        pid = seg.current_patient().patient_id
        for i in range(args.segment_runs):
            phases.append(measure(f"segment #{i + 1} (worker + result layers)", heartbeat,
                                  seg.segment_button.native.click, until=lambda: not seg.running,
                                  timeout_s=args.timeout, settle_s=0.5))
            phases[-1]["status"] = seg.status_label.value
        if not any(layer.name == f"{pid} tumour" for layer in viewer.layers):
            phases[-1]["note"] += f" no '{pid} tumour' layer: {seg.status_label.value}"
        for value in [float(v) for v in args.thresholds.split(",") if v.strip()]:
            phases.append(measure(f"re-threshold to {value:.2f} (worker + labels refill)", heartbeat,
                                  lambda value=value: seg.set_threshold(value), until=lambda: not seg.postprocessing,
                                  timeout_s=args.timeout, settle_s=0.3))
        if args.switches:
            phases += browser_phases(args, viewer, heartbeat, folder)

        if not args.no_train:
            phases += train_phases(args, viewer, heartbeat, tmp, checkpoint)
    finally:
        viewer.close()

    print()
    print_table(["phase", "s", "ticks", "max stall ms", "p99 gap ms", "median gap ms", ">100 ms", ">250 ms"],
                [[p["phase"], p["elapsed_s"], p["ticks"], p["max_gap_ms"], p["p99_gap_ms"], p["median_gap_ms"],
                  p["gaps_over_100ms"], p["gaps_over_250ms"]] for p in phases],
                title=f"Qt event loop gaps (heartbeat every {args.interval_ms} ms)", digits=1)
    print("  max stall: the longest time the window could not repaint or react; p99: 99th percentile of the")
    print("  gaps between heartbeat ticks. Opening a patient and adding result layers run on the GUI thread by")
    print("  design; segmentation and training run in worker threads and should not stall it.")
    for p in phases:
        if p.get("note") or p.get("status"):
            print(f"  {p['phase']}: {p.get('note', '')} {p.get('status', '')}".rstrip())
    tmpdir.cleanup()
    payload = {"benchmark": "gui", "machine": facts, "patient": folder.name, "patient_source": patient_note,
               "model": model_note, "interval_ms": args.interval_ms, "phases": phases,
               "settings": {k: (str(v) if isinstance(v, Path) else v) for k, v in vars(args).items()}}
    write_json(args.json, payload)
    return payload


def browser_phases(args, viewer, heartbeat: Heartbeat, folder: Path) -> list[dict]:
    """Dock the patient browser on the open patient's dataset root and switch patients: the first switch leaves
    the segmented patient (its result layers close), then plain Next / Previous."""
    from napari_lgg_seg.widgets.browser import PatientBrowser

    browser = PatientBrowser(viewer)
    browser.ask = lambda title, text: True  # never block on a dialog
    viewer.window.add_dock_widget(browser, name="Patient browser", area="right")
    phases = [measure("dock the patient browser on the root", heartbeat,
                      lambda: browser.adopt_root(folder.parent, folder.name), settle_s=1.0)]
    n, start = len(browser.folders), browser.current_index
    forward = args.switches // 2
    step = 1 if start + forward < n else -1
    for i in range(args.switches):
        direction = step if i < forward else -step
        button, label = (browser.next_button, "next") if direction > 0 else (browser.prev_button, "previous")
        action = button.native.click  # the user's path (the dock's buttons and keys defer part of the switch)
        target = browser.current_index + direction
        if not 0 <= target < n:
            break
        what = "leave the segmented patient" if i == 0 else "plain switch"
        phases.append(measure(f"browser {label} #{i + 1} ({what}, {browser.folders[target].name[:12]}…)",
                              heartbeat, action, settle_s=1.0))
        if browser.current_index != target:
            phases[-1]["note"] += f" did not switch: {browser.status_label.value}"
    return phases


def train_phases(args, viewer, heartbeat: Heartbeat, tmp: Path, checkpoint: Path) -> list[dict]:
    """Dock the Train widget (its own phase: the window lays the new dock out), then run a short training on
    phantom patients; event-loop stats of each."""
    from napari_lgg_seg.sample import write_phantom_dataset
    from napari_lgg_seg.widgets.train import TrainWidget

    root = tmp / "train_data"
    write_phantom_dataset(root, n_patients=3, n_slices=args.train_slices, size=args.phantom_size, seed=10)
    tw = TrainWidget(viewer)
    docked = measure("dock the Train widget", heartbeat,
                     lambda: viewer.window.add_dock_widget(tw, name="Train / fine-tune", area="right"), settle_s=0.5)
    if not tw.add_data_root(root):
        raise RuntimeError(f"the Train dock refused {root}: {tw.status_label.value}")
    tw.set_output_folder(tmp / "run")
    tw.set_start(checkpoint if args.train_from == "checkpoint" else "scratch")
    tw.epochs_spin.value, tw.steps_spin.value, tw.batch_spin.value = 1, args.train_steps, args.train_batch
    tw.val_spin.value, tw.crop_check.value = args.train_val, not args.train_whole_slices
    result = measure(f"train {args.train_steps} steps, batch {args.train_batch} (child process)", heartbeat,
                     tw.start_button.native.click, until=lambda: not tw.running,
                     timeout_s=args.timeout, settle_s=0.5)
    result["status"] = tw.status_label.value
    result["reports"] = tw.reports_seen
    if tw.best_path is None:
        result["note"] += " no best.pt (see status)"
    return [docked, result]


if __name__ == "__main__":
    main()
