"""The "Train / fine-tune" dock: tiny runs on 64x64 phantoms in a child process, read by a worker (no sleeps)."""

from __future__ import annotations

import json
import os
import signal
from pathlib import Path

import pytest
import torch

from conftest import make_tiny_checkpoint
from napari_lgg_seg.model import read_checkpoint

WAIT_MS = 180_000


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    import napari_lgg_seg.model as model_mod

    monkeypatch.setenv("LGG_SEG_RECOVERY_DIR", str(tmp_path / "recovery"))
    monkeypatch.setattr(model_mod, "default_model_path", lambda: None)


@pytest.fixture
def start_checkpoint(tmp_path) -> Path:
    """A tiny model whose card says it was trained on 64x64 slices (so phantoms are not resized)."""
    path = make_tiny_checkpoint(tmp_path / "start.pt")
    raw = torch.load(path, weights_only=True)
    raw["config"] = {"image_size": 64}
    torch.save(raw, path)
    return path


@pytest.fixture
def widget(make_napari_viewer, qtbot):
    from napari_lgg_seg.widgets.train import TrainWidget

    viewer = make_napari_viewer()
    w = TrainWidget(viewer)
    viewer.window.add_dock_widget(w, name="Train")
    yield w
    w.stop()
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT_MS)


def configure(w, root, start, out, *, epochs: int, steps: int = 2) -> None:
    assert w.add_data_root(root)
    w.set_start(start)
    w.epochs_spin.value = epochs
    w.steps_spin.value = steps
    w.batch_spin.value = 2
    w.val_spin.value = 0.34
    w.set_output_folder(out)


def test_start_stop_resume(widget, qtbot, phantom_root, start_checkpoint, tmp_path):
    from napari_lgg_seg.segmentation import registered_models, unregister_model

    w = widget
    out = tmp_path / "run"
    configure(w, phantom_root, start_checkpoint, out, epochs=40)
    assert w.start_weights() == str(start_checkpoint.resolve())
    config = w.make_config()
    assert config.image_size == 64 and config.init_weights == str(start_checkpoint.resolve())
    assert config.lr == pytest.approx(1e-4)  # fine-tuning default
    assert not w.resume_button.enabled

    worker = w.start()
    assert worker is not None, w.status_label.value
    assert w.running and w.stop_button.enabled and not w.start_button.enabled
    assert not w.epochs_spin.enabled  # settings are locked while running
    qtbot.waitUntil(lambda: len(w.history) >= 1, timeout=WAIT_MS)
    assert w.progress.max == 40 * 2 and w.progress.value >= 2
    qtbot.waitUntil(lambda: w.plot_draws >= 1, timeout=WAIT_MS)  # rendered off the GUI thread, then shown
    assert not w.plot_label.native.pixmap().isNull() and w.plot_label.native.pixmap().width() >= 360
    child = w._process.process
    w.stop()
    assert not w.stop_button.enabled  # one Stop per run
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT_MS)
    assert child.returncode == 0  # the child finished its batch, saved and exited (not killed)

    done = w.last_report
    assert done["kind"] == "done" and done["stopped"]
    assert (out / "best.pt").is_file() and w.best_path == str(out / "best.pt")
    epochs_done = read_checkpoint(out / "last.pt")["train_state"]["epoch"]
    assert 1 <= epochs_done < 40
    assert "Stopped" in w.status_label.value
    assert w.progress.value == w.progress.min  # emptied, not left at the stopped step (bug 6)
    # the best model is offered to the Segment dock
    assert any(path == str((out / "best.pt").resolve()) for _, path in registered_models())
    assert w.resume_button.enabled and w.start_button.enabled

    # Resume continues the same run for one more epoch
    w.epochs_spin.value = epochs_done + 1
    worker = w.resume()
    assert worker is not None, w.status_label.value
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT_MS)
    assert w.last_report["kind"] == "done" and not w.last_report["stopped"]
    assert w.progress.value == w.progress.max
    state = read_checkpoint(out / "last.pt")["train_state"]
    assert state["epoch"] == epochs_done + 1
    assert [h["epoch"] for h in w.history] == list(range(1, epochs_done + 2))  # old epochs from metrics.csv
    assert json.loads((out / "config.json").read_text())["epochs"] == epochs_done + 1
    unregister_model(out / "best.pt")


def test_stop_in_the_first_epoch_saves_nothing(widget, qtbot, phantom_root, start_checkpoint, tmp_path):
    w = widget
    out = tmp_path / "run"
    configure(w, phantom_root, start_checkpoint, out, epochs=1, steps=10_000)
    w.start()
    qtbot.waitUntil(lambda: w.last_report is not None and w.last_report["kind"] == "step", timeout=WAIT_MS)
    w.stop()
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT_MS)
    assert w.last_report["kind"] == "done" and w.last_report["stopped"]
    assert not (out / "best.pt").exists() and w.best_path is None
    assert "no model was saved" in w.status_label.value
    assert w.progress.value < 10_000


def test_start_is_refused_with_clear_messages(widget, tmp_path, phantom_root):
    w = widget
    assert w.start() is None and "data folder" in w.status_label.value
    empty = tmp_path / "empty"
    empty.mkdir()
    assert not w.add_data_root(empty) and "no patient folders" in w.status_label.value
    assert w.data_roots() == []
    one = phantom_root / "PHANTOM_00_20000101"
    assert w.add_data_root(one)  # a single patient folder is a valid root
    w.set_start("scratch")
    w.set_output_folder(tmp_path / "run")
    assert w.start() is None and "validation share to 0" in w.status_label.value
    assert w.resume() is None and "no run to resume" in w.status_label.value


def test_existing_run_folder_is_not_overwritten(widget, tmp_path, phantom_root):
    w = widget
    out = tmp_path / "run"
    out.mkdir()
    (out / "last.pt").write_bytes(b"x")
    (out / "config.json").write_text(json.dumps({"epochs": 7}))
    w.add_data_root(phantom_root)
    w.set_output_folder(out)
    assert w.epochs_spin.value == 7 and "holds a run" in w.status_label.value
    assert w.resume_button.enabled
    assert w.start() is None and "Resume it" in w.status_label.value
    assert (out / "last.pt").read_bytes() == b"x"


def test_training_error_is_shown(widget, qtbot, phantom_root, start_checkpoint, tmp_path):
    for mask in (phantom_root / "PHANTOM_01_20000101").glob("*_mask.tif"):
        mask.unlink()
    w = widget
    configure(w, phantom_root, start_checkpoint, tmp_path / "run", epochs=1)
    w.start()
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT_MS)
    assert "Training failed" in w.status_label.value and "mask" in w.status_label.value
    assert w.start_button.enabled


def test_the_manifest_opens_the_dock(make_napari_viewer):
    from napari_lgg_seg.widgets.train import TrainWidget

    _, w = make_napari_viewer().window.add_plugin_dock_widget("napari-lgg-seg", "Train / fine-tune")
    assert isinstance(w, TrainWidget) and w.start_combo.current_choice == "Scratch (random weights)"


def test_the_dock_trains_in_a_child_process(widget, qtbot, monkeypatch, phantom_root, start_checkpoint, tmp_path):
    """Training runs in another process: the engine is unusable in this one, and the dock still trains."""
    import napari_lgg_seg.training as training_mod
    from napari_lgg_seg.segmentation import registered_models, unregister_model

    def not_here(*args, **kwargs):
        raise AssertionError("training ran in the napari process")

    monkeypatch.setattr(training_mod, "train", not_here)
    w = widget
    out = tmp_path / "run"
    configure(w, phantom_root, start_checkpoint, out, epochs=1, steps=2)
    assert w.start() is not None
    child = w._process.process
    assert child.pid != os.getpid()
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT_MS)
    assert child.returncode == 0
    assert w.last_report["kind"] == "done" and not w.last_report["stopped"], w.status_label.value
    assert w.reports_seen == 5  # start, 2 steps, epoch, done
    assert w.progress.max == 2 and w.progress.value == 2
    assert [h["epoch"] for h in w.history] == [1] and "val_patient_dice_mean" in w.history[0]
    assert "Finished" in w.status_label.value and w.best_path == str(out / "best.pt")
    assert any(path == str((out / "best.pt").resolve()) for _, path in registered_models())
    qtbot.waitUntil(lambda: w.plot_draws >= 1, timeout=WAIT_MS)
    assert read_checkpoint(out / "best.pt")["meta"]["init_weights"] == str(start_checkpoint.resolve())
    unregister_model(out / "best.pt")


@pytest.mark.skipif(not hasattr(os, "getpriority"), reason="POSIX scheduling priorities")
def test_the_child_trains_below_the_windows_priority(widget, qtbot, phantom_root, start_checkpoint, tmp_path):
    """The child lowers its own priority, so that on 2 cores its training threads do not delay napari's event
    loop (benchmarks/gui.py: longest stall while training 193-280 ms before, 77-96 ms after)."""
    from napari_lgg_seg.train_process import NICENESS

    w = widget
    configure(w, phantom_root, start_checkpoint, tmp_path / "run", epochs=1, steps=500)
    assert w.start() is not None
    child = w._process.process
    qtbot.waitUntil(lambda: w.reports_seen >= 2, timeout=WAIT_MS)  # training steps: the job has been read
    assert os.getpriority(os.PRIO_PROCESS, child.pid) == min(19, os.getpriority(os.PRIO_PROCESS, 0) + NICENESS)
    if hasattr(os, "SCHED_IDLE"):  # Linux: it only gets the CPU time the window leaves idle
        assert os.sched_getscheduler(child.pid) == os.SCHED_IDLE
    w.stop()
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT_MS)


def test_a_bad_slice_fails_in_the_child_and_the_dock_is_usable_again(widget, qtbot, phantom_root,
                                                                     start_checkpoint, tmp_path):
    """An error in the child (a data root with an unreadable slice) is shown, with the bar emptied."""
    bad = sorted((phantom_root / "PHANTOM_01_20000101").glob("*_1.tif"))[0]
    bad.write_bytes(b"not a tiff")
    w = widget
    configure(w, phantom_root, start_checkpoint, tmp_path / "run", epochs=1)
    assert w.start() is not None
    child = w._process.process
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT_MS)
    assert child.returncode == 1
    assert w.last_report["kind"] == "error"
    text = w.status_label.value
    assert "Training failed" in text and bad.name in text, text
    assert w.start_button.enabled and w.epochs_spin.enabled and w.progress.value == w.progress.min
    assert not (tmp_path / "run" / "last.pt").exists()


def test_a_child_that_dies_is_reported(widget, qtbot, phantom_root, start_checkpoint, tmp_path):
    w = widget
    configure(w, phantom_root, start_checkpoint, tmp_path / "run", epochs=1, steps=10_000)
    w.start()
    qtbot.waitUntil(lambda: w.last_report is not None and w.last_report["kind"] == "step", timeout=WAIT_MS)
    os.kill(w._process.process.pid, signal.SIGKILL)
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT_MS)
    assert "Training failed" in w.status_label.value and "exit status -9" in w.status_label.value
    assert w.start_button.enabled and w.progress.value == w.progress.min


def test_closing_the_dock_kills_the_child(widget, qtbot, phantom_root, start_checkpoint, tmp_path):
    w = widget
    configure(w, phantom_root, start_checkpoint, tmp_path / "run", epochs=1, steps=10_000)
    w.start()
    child = w._process.process
    qtbot.waitUntil(lambda: w.last_report is not None and w.last_report["kind"] == "step", timeout=WAIT_MS)
    w.viewer.window.remove_dock_widget(w.native)
    qtbot.waitUntil(lambda: child.poll() is not None, timeout=10_000)
    assert child.returncode == -signal.SIGKILL
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT_MS)


def test_current_model_of_the_segment_dock_is_offered(widget, start_checkpoint):
    from napari_lgg_seg.widgets.segment import SegmentWidget

    seg = SegmentWidget(widget.viewer)
    widget.viewer.window.add_dock_widget(seg, name="Segment")
    assert seg.add_checkpoint(start_checkpoint)
    widget.set_start("current")
    assert widget.start_combo.current_choice.startswith("Current model")
    assert widget.start_weights() == str(start_checkpoint.resolve())
    widget.crop_check.value = True
    assert widget.make_config().crop_size is None  # a 64-px model: slices too small for 128-px crops
    widget.set_start("scratch")
    assert widget.start_weights() is None and widget.make_config().init_weights == ""
    assert widget.lr_spin.value == pytest.approx(1e-3)
    config = widget.make_config()
    assert (config.image_size, config.crop_size, config.tumour_fraction) == (256, 128, 0.5)


def test_fine_tuning_the_default_model_starts_at_the_tooltips_lr(make_napari_viewer, monkeypatch, start_checkpoint):
    """Issue 13 bug 6: the dock opened with "Default model" selected fine-tunes at 1e-4, as its tooltip says."""
    import napari_lgg_seg.model as model_mod
    from napari_lgg_seg.widgets.train import TrainWidget

    monkeypatch.setattr(model_mod, "default_model_path", lambda: start_checkpoint)
    w = TrainWidget(make_napari_viewer())
    assert w.start_weights() == str(start_checkpoint)
    assert "1e-4" in w.lr_spin.tooltip and w.lr_spin.value == pytest.approx(1e-4)
    w.set_start("scratch")
    assert w.lr_spin.value == pytest.approx(1e-3)


def test_one_epoch_plot_has_no_colliding_labels():
    """Issue 13 bug 6: after one epoch the dock's curves had overlapping x tick labels (0.96 0.98 1.00 ...)."""
    from matplotlib.backends.backend_agg import FigureCanvasAgg
    from matplotlib.figure import Figure

    from napari_lgg_seg.plots import draw_curves
    from napari_lgg_seg.widgets.train import PLOT_HEIGHT

    history = [dict(epoch=1, train_loss=0.61234, val_loss=0.5812, val_slice_dice=0.41, val_slice_iou=0.3,
                    val_patient_dice_mean=0.38)]
    fig = Figure(figsize=(3.6, PLOT_HEIGHT / 100), dpi=100, layout="tight")
    canvas = FigureCanvasAgg(fig)
    axes = fig.add_subplot(1, 2, 1), fig.add_subplot(1, 2, 2)
    draw_curves(history, *axes, fontsize=7)
    canvas.draw()
    renderer = canvas.get_renderer()
    for ax in axes:
        boxes = [t.get_window_extent(renderer) for t in ax.get_xticklabels() if t.get_text()]
        assert all(t.get_text().lstrip("−-").isdigit() for t in ax.get_xticklabels() if t.get_text())
        for a, b in zip(boxes, boxes[1:]):
            assert a.x1 < b.x0, "x tick labels overlap"
        legend = ax.get_legend().get_window_extent(renderer)
        assert not legend.overlaps(ax.yaxis.label.get_window_extent(renderer))



def test_the_curves_image_never_widens_the_dock(widget, qtbot):
    """The curves are rendered at the label's own width: an image wider than the label widened the dock, which
    narrowed the canvas and made napari redraw it at the end of every run (a 60-90 ms freeze, benchmarks/gui.py)."""
    w = widget
    w.plot_label.native.setMaximumWidth(200)  # a narrow dock
    qtbot.waitUntil(lambda: w.plot_label.native.width() <= 200, timeout=5000)
    w.history.extend([{"epoch": 1, "train_loss": 0.9, "val_loss": 0.8}, {"epoch": 2, "train_loss": 0.7, "val_loss": 0.6}])
    w._draw_plot()
    qtbot.waitUntil(lambda: w.plot_draws >= 1, timeout=WAIT_MS)
    pixmap = w.plot_label.native.pixmap()
    assert pixmap.width() / pixmap.devicePixelRatio() <= w.plot_label.native.width()
