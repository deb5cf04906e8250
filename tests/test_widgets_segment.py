"""The "Segment tumour" dock: tiny random-weight checkpoints and 64x64 phantoms (no sleeps)."""

from __future__ import annotations

import threading
from pathlib import Path

import numpy as np
import pytest

from conftest import make_tiny_checkpoint
from napari_lgg_seg import recovery
from napari_lgg_seg._reader import patient_layer_data
from napari_lgg_seg.io import Patient
from napari_lgg_seg.sample import make_phantom

PID = "PHANTOM_07_20000101"
WAIT_MS = 120_000


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Recovery files in a temporary folder; no shipped default model (tests choose checkpoints)."""
    import napari_lgg_seg.model as model_mod

    monkeypatch.setenv("LGG_SEG_RECOVERY_DIR", str(tmp_path / "recovery"))
    monkeypatch.setattr(model_mod, "default_model_path", lambda: None)


def add_patient(viewer, pid: str = PID, n_slices: int = 8, size: int = 64, seed: int = 3, scale=None) -> Patient:
    images, masks = make_phantom(n_slices=n_slices, size=size, seed=seed)
    patient = Patient(pid, images, masks, list(range(1, n_slices + 1)), [], [None] * n_slices, "")
    for data, kwargs, layer_type in patient_layer_data(patient):
        if scale is not None:
            kwargs = {**kwargs, "scale": scale}
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    return patient


def never_ask(title: str, text: str) -> bool:
    raise AssertionError(f"unexpected question: {title}: {text}")


class Answers:
    """A scripted ``ask``: returns the queued answers and records the questions."""

    def __init__(self, *answers: bool) -> None:
        self.answers = list(answers)
        self.questions: list[str] = []

    def __call__(self, title: str, text: str) -> bool:
        self.questions.append(title)
        return self.answers.pop(0)


@pytest.fixture
def widget(make_napari_viewer, qtbot):
    from napari_lgg_seg.widgets.segment import SegmentWidget

    viewer = make_napari_viewer()
    w = SegmentWidget(viewer)
    viewer.window.add_dock_widget(w, name="Segment tumour")
    w.ask = never_ask
    return w


def run_segmentation(qtbot, w):
    worker = w.segment()
    assert worker is not None, w.status_label.value
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT_MS)
    return worker


def segmented(qtbot, w, checkpoint: Path):
    """Segment the patient already in the viewer; returns (labels layer, probability layer)."""
    assert w.add_checkpoint(checkpoint)
    run_segmentation(qtbot, w)
    labels = w.viewer.layers[f"{PID} tumour"]
    probs = w.viewer.layers[f"{PID} tumour probability"]
    return labels, probs


def settled(qtbot, w) -> None:
    """Wait for re-thresholds (made in worker threads) to reach the layer."""
    qtbot.waitUntil(lambda: not w.postprocessing, timeout=WAIT_MS)


def set_probabilities(labels, probs_layer, values: np.ndarray) -> None:
    """Replace the stored probabilities by known values (a random network's are arbitrary)."""
    probs_layer.data = values.astype(np.float32)


def result_layer_names(viewer) -> list[str]:
    """Names of the tumour layers that hold a result: the parked spares (hidden, one voxel) are not results."""
    names = []
    for layer in viewer.layers:
        if (layer.metadata or {}).get("lgg_role") == "spare":
            assert not layer.visible and layer.data.size == 1, f"{layer.name} is not parked"
        elif "tumour" in layer.name:
            names.append(layer.name)
    return names


def ramp(shape) -> np.ndarray:
    return np.linspace(0.0, 1.0, int(np.prod(shape)), dtype=np.float32).reshape(shape)


def test_segment_makes_paint_ready_labels(widget, qtbot, tiny_checkpoint):
    from napari.layers import Image, Labels

    from napari_lgg_seg.inference import PostProcessing, postprocess

    add_patient(widget.viewer, scale=(2.0, 0.5, 0.5))
    assert widget.current_patient().patient_id == PID
    labels, probs = segmented(qtbot, widget, tiny_checkpoint)
    assert isinstance(labels, Labels) and isinstance(probs, Image)
    assert labels.mode == "paint" and labels.selected_label == 1 and labels.brush_size == 10
    assert widget.viewer.layers.selection.active is labels
    assert not probs.visible and probs.data.dtype == np.float32 and probs.data.shape == (8, 64, 64)
    assert labels.data.shape == (8, 64, 64)
    assert 0.0 <= float(probs.data.min()) and float(probs.data.max()) <= 1.0
    np.testing.assert_array_equal(labels.data, postprocess(probs.data, PostProcessing(threshold=0.5)))
    meta = labels.metadata
    assert meta["lgg_role"] == "prediction" and meta["lgg_patient_id"] == PID
    assert meta["lgg_model"] == str(tiny_checkpoint.resolve())
    assert meta["lgg_slice_numbers"] == list(range(1, 9))
    np.testing.assert_array_equal(meta["lgg_ai_mask"], labels.data)
    np.testing.assert_allclose(labels.scale, (2.0, 0.5, 0.5))
    assert widget.segment_button.enabled and not widget.stop_button.enabled
    voxels = int(np.count_nonzero(labels.data))
    text = widget.readout_label.value
    assert f"{voxels:,} voxels" in text
    assert f"{voxels * 0.5:,.1f} mm" in text  # voxel volume 2 x 0.5 x 0.5 mm^3


def test_threshold_and_postprocessing_update_labels(widget, qtbot, tiny_checkpoint):
    add_patient(widget.viewer)
    labels, probs = segmented(qtbot, widget, tiny_checkpoint)
    values = ramp(labels.data.shape)
    set_probabilities(labels, probs, values)
    widget.set_threshold(0.3)
    settled(qtbot, widget)
    np.testing.assert_array_equal(labels.data, values >= 0.3)
    widget.threshold.value = 0.7  # the slider drives the same update
    settled(qtbot, widget)
    assert widget.settings().threshold == pytest.approx(0.7)
    np.testing.assert_array_equal(labels.data, values >= 0.7)
    np.testing.assert_array_equal(labels.metadata["lgg_ai_mask"], values >= 0.7)
    widget.set_threshold(0.2)  # made in a worker, off the GUI thread; of two quick moves the last one wins
    assert widget.postprocessing
    widget.set_threshold(0.6)
    settled(qtbot, widget)
    np.testing.assert_array_equal(labels.data, values >= 0.6)
    # two blobs: keep-largest drops the smaller one, a minimum size drops both below it
    blobs = np.zeros(labels.data.shape, np.float32)
    blobs[2:5, 10:20, 10:20] = 0.9  # 300 voxels
    blobs[6, 40:45, 40:45] = 0.9  # 25 voxels
    set_probabilities(labels, probs, blobs)
    widget.set_threshold(0.5)
    settled(qtbot, widget)
    assert int(labels.data.sum()) == 325
    widget.largest_check.value = True
    settled(qtbot, widget)
    assert int(labels.data.sum()) == 300
    widget.largest_check.value = False
    settled(qtbot, widget)
    widget.min_size.value = 400
    settled(qtbot, widget)
    assert int(labels.data.sum()) == 0
    assert f"Tumour in '{PID} tumour': 0 voxels in 0 slices" in widget.readout_label.value


def test_threshold_change_after_an_edit_asks(widget, qtbot, tiny_checkpoint):
    add_patient(widget.viewer)
    labels, probs = segmented(qtbot, widget, tiny_checkpoint)
    values = ramp(labels.data.shape)
    set_probabilities(labels, probs, values)
    widget.set_threshold(0.6)
    settled(qtbot, widget)
    labels.paint((0, 10, 10), 1)  # a brush stroke on slice 0, where the ramp is below 0.6
    edited = np.array(labels.data)
    assert int(edited.sum()) > int((values >= 0.6).sum())

    widget.ask = answers = Answers(False)
    widget.set_threshold(0.4)
    settled(qtbot, widget)
    assert answers.questions == ["Discard your corrections?"]
    np.testing.assert_array_equal(labels.data, edited)  # corrections kept
    assert widget.threshold.value == pytest.approx(0.6)  # control put back

    widget.ask = answers = Answers(True)
    widget.set_threshold(0.4)
    settled(qtbot, widget)
    assert answers.questions == ["Discard your corrections?"]
    np.testing.assert_array_equal(labels.data, values >= 0.4)


def test_compare_with_ai_counts_a_known_edit(widget, qtbot, tiny_checkpoint):
    add_patient(widget.viewer)
    labels, probs = segmented(qtbot, widget, tiny_checkpoint)
    ai = np.zeros(labels.data.shape, np.float32)
    ai[3, 20:30, 20:30] = 1.0  # 100 voxels
    set_probabilities(labels, probs, ai)
    assert widget.apply_postprocessing()
    settled(qtbot, widget)
    assert int(labels.data.sum()) == 100
    # the user erases 20 voxels of the AI mask and adds 30 elsewhere
    labels.data_setitem((np.full(20, 3), np.repeat([20, 21], 10), np.tile(np.arange(20, 30), 2)), 0)
    labels.data_setitem((np.full(30, 5), np.repeat([40, 41, 42], 10), np.tile(np.arange(40, 50), 3)), 1)
    result = widget.compare_with_ai()
    assert result["voxels_changed"] == 50
    assert result["voxels_added"] == 30 and result["voxels_removed"] == 20
    assert result["dice"] == pytest.approx(2 * 80 / (100 + 110))
    text = widget.readout_label.value
    assert "Dice vs AI: 0.7619" in text and "changed 50 voxels" in text
    assert "110 voxels in 2 slices" in text


def test_without_a_model_segment_is_refused(widget, qtbot, tmp_path):
    from napari_lgg_seg.widgets.segment import NO_MODEL_TEXT

    add_patient(widget.viewer)
    assert len(widget.model_combo.choices) == 0
    assert widget.model_label.value == NO_MODEL_TEXT
    assert not widget.segment_button.enabled
    assert widget.segment() is None
    assert NO_MODEL_TEXT in widget.status_label.value
    assert len(widget.viewer.layers) == 4  # nothing was added
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    assert not widget.add_checkpoint(broken)
    assert "Could not load the model" in widget.model_label.value
    assert not widget.segment_button.enabled
    assert widget.add_checkpoint(make_tiny_checkpoint(tmp_path / "ok.pt"))
    assert widget.segment_button.enabled


def test_checkpoint_card_sets_the_controls(widget, tmp_path):
    card = {"inference": {"threshold": 0.35, "tta": True, "keep_largest": True, "min_lesion_voxels": 7,
                          "fill_holes": True}}
    assert widget.add_checkpoint(make_tiny_checkpoint(tmp_path / "carded.pt", meta=card))
    assert widget.threshold.value == pytest.approx(0.35)
    assert widget.settings().threshold == pytest.approx(0.35)
    assert widget.tta_check.value and widget.largest_check.value and widget.fill_check.value
    assert widget.min_size.value == 7
    assert "model card" in widget.model_label.value


def test_registered_models_appear(widget, qtbot, tmp_path):
    from napari_lgg_seg.segmentation import register_model, unregister_model

    path = make_tiny_checkpoint(tmp_path / "finetuned.pt")
    try:
        register_model(path, "Fine-tuned (epoch 3)")
        assert widget.model_combo.choices == (str(path.resolve()),)
        assert widget.model_combo.current_choice == "Fine-tuned (epoch 3)"
        # loaded in a worker (the window keeps painting)
        qtbot.waitUntil(lambda: widget.loaded_model is not None, timeout=WAIT_MS)
        assert widget.loaded_model.path == str(path.resolve()) and not widget.running
    finally:
        unregister_model(path)
    assert len(widget.model_combo.choices) == 0


class GatedModel:
    """Wraps a model so that its forward pass waits for the test (no timing assumptions)."""

    def __init__(self, net) -> None:
        import torch

        class Gate(torch.nn.Module):
            def __init__(self, inner):
                super().__init__()
                self.inner = inner
                self.entered = threading.Event()
                self.release = threading.Event()
                self.calls = 0

            def forward(self, x):
                self.calls += 1
                self.entered.set()
                assert self.release.wait(60), "test never released the model"
                return self.inner(x)

        self.module = Gate(net)


def test_mask_is_made_in_the_worker_and_follows_controls_changed_meanwhile(widget, qtbot, tiny_checkpoint):
    """Post-processing runs in the worker with the settings at the click; if the user changes the controls
    while it runs, the added mask follows the controls as they are when the result arrives."""
    from napari_lgg_seg.inference import postprocess

    add_patient(widget.viewer)
    assert widget.add_checkpoint(tiny_checkpoint)
    gate = GatedModel(widget.loaded_model.model).module
    widget.loaded_model.model = gate
    widget.batch_size = 64
    worker = widget.segment()
    qtbot.waitUntil(gate.entered.is_set, timeout=WAIT_MS)
    results = []
    worker.returned.connect(results.append)
    widget.set_threshold(0.9)  # changed while the worker runs
    gate.release.set()
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    probs, worker_mask = results[0]
    np.testing.assert_array_equal(worker_mask, probs >= 0.5)  # the worker used the settings at the click
    labels = widget.viewer.layers[f"{PID} tumour"]
    np.testing.assert_array_equal(labels.data, postprocess(probs, widget.settings()))
    assert widget.settings().threshold == pytest.approx(0.9)


def test_stop_during_the_first_batch_adds_nothing(widget, qtbot, tiny_checkpoint):
    add_patient(widget.viewer, n_slices=12)
    assert widget.add_checkpoint(tiny_checkpoint)
    gate = GatedModel(widget.loaded_model.model).module
    widget.loaded_model.model = gate
    widget.batch_size = 2
    worker = widget.segment()
    assert worker is not None
    qtbot.waitUntil(gate.entered.is_set, timeout=WAIT_MS)
    assert widget.running
    assert not widget.segment_button.enabled and widget.stop_button.enabled
    assert widget.segment() is None  # a second run cannot start
    widget.stop_button.native.click()
    gate.release.set()
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert gate.calls == 1  # stopped between batches
    assert result_layer_names(widget.viewer) == []
    assert widget.status_label.value == "Stopped; no layer was added."
    assert widget.segment_button.enabled


def test_closing_the_patient_while_segmenting_is_safe(widget, qtbot, tiny_checkpoint):
    add_patient(widget.viewer)
    assert widget.add_checkpoint(tiny_checkpoint)
    gate = GatedModel(widget.loaded_model.model).module
    widget.loaded_model.model = gate
    widget.segment()
    qtbot.waitUntil(gate.entered.is_set, timeout=WAIT_MS)
    widget.viewer.layers.clear()
    gate.release.set()
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert len(widget.viewer.layers) == 0
    assert "closed while segmenting" in widget.status_label.value


def test_result_layers_are_added_one_event_loop_turn_apart(widget, qtbot, tiny_checkpoint):
    """Issue 13 (stalls): when a patient appears and a model is loaded, the dock adds the two layers its first result
    will need, parked (hidden, one voxel), one event-loop turn apart and without taking the user's selection; the
    result then inserts no layer: the probabilities, the labels and the brush set-up refill them one turn apart (the
    window repaints between them). The dock counts as running until the last step, and a patient closed in between
    stops them."""
    from qtpy.QtCore import QTimer

    viewer = widget.viewer
    turns = [0]
    ticker = QTimer()
    ticker.setInterval(0)
    ticker.timeout.connect(lambda: turns.__setitem__(0, turns[0] + 1))
    ticker.start()
    add_patient(viewer)
    chosen = viewer.layers.selection.active
    inserted = []
    viewer.layers.events.inserted.connect(lambda e: inserted.append((e.value.name, turns[0])))
    spare_names = ["spare result layer (probability)", "spare result layer (tumour)"]
    qtbot.wait(50)
    assert inserted == [], "no model, no result to prepare for"
    assert widget.add_checkpoint(tiny_checkpoint)
    qtbot.waitUntil(lambda: len(inserted) == 2, timeout=WAIT_MS)
    assert [name for name, _ in inserted] == spare_names and inserted[0][1] < inserted[1][1]
    qtbot.waitUntil(lambda: viewer.layers.selection.active is chosen, timeout=WAIT_MS)  # given back a turn later
    assert set(viewer.layers.selection) == {chosen}
    assert result_layer_names(viewer) == []  # hidden, one voxel: they do not stretch the dims slider
    probs_spare, labels_spare = (viewer.layers[name] for name in spare_names)
    steps = []
    probs_spare.events.data.connect(lambda e: steps.append(("probabilities", turns[0], widget.running)))
    labels_spare.events.data.connect(lambda e: steps.append(("labels", turns[0], widget.running)))
    redone = []  # napari work the refill can skip: the spares are already on top, the colours already right
    for emitter in (viewer.layers.events.reordered, viewer.layers.events.moved, labels_spare.events.colormap):
        emitter.connect(lambda e: redone.append(e.type))
    run_segmentation(qtbot, widget)
    assert redone == []
    ticker.stop()
    assert len(inserted) == 2, "the first result refills the parked layers, it adds none"
    assert [(what, running) for what, _, running in steps] == [("probabilities", True), ("labels", True)]
    assert steps[0][1] < steps[1][1], "probabilities and labels are placed in two event-loop turns"
    assert probs_spare.name == f"{PID} tumour probability" and labels_spare.name == f"{PID} tumour"
    assert not probs_spare.visible and labels_spare.visible and probs_spare.data.shape == (8, 64, 64)
    assert not widget.running and widget.segment_button.enabled
    assert viewer.layers.selection.active is labels_spare and labels_spare.mode == "paint"
    # closing the patient between two steps: the remaining steps are dropped with a message
    patient = widget.current_patient()
    ran = []
    widget._adding_result = True
    widget.session.run_steps(patient, [lambda: widget.viewer.layers.clear(), lambda: ran.append("second step")],
                             widget._end_adding)
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert ran == [] and "closed while the result was being added" in widget.status_label.value


def test_single_2d_image_is_replicated(widget, qtbot, tiny_checkpoint):
    from napari_lgg_seg.layers import find_patients

    images, _ = make_phantom(n_slices=3, size=64, seed=1)
    widget.viewer.add_image(images[1, :, :, 1], name="some flair")
    patient = find_patients(widget.viewer)["some_flair"]
    volume = patient.volume()
    assert volume.shape == (1, 64, 64, 3)
    assert all(np.array_equal(volume[0, ..., c], images[1, :, :, 1]) for c in range(3))
    assert widget.add_checkpoint(tiny_checkpoint)
    run_segmentation(qtbot, widget)
    labels = widget.viewer.layers["some_flair tumour"]
    assert labels.data.shape == (64, 64)


def test_patient_volume_rebuilds_the_three_channels(make_napari_viewer):
    from napari_lgg_seg.layers import find_patients

    viewer = make_napari_viewer()
    patient = add_patient(viewer)
    found = find_patients(viewer)
    assert list(found) == [PID]
    np.testing.assert_array_equal(found[PID].volume(), patient.images)
    assert found[PID].metadata()["lgg_patient_id"] == PID


def test_autosave_and_restore(widget, qtbot, tiny_checkpoint, make_napari_viewer):
    from napari_lgg_seg.widgets.segment import SegmentWidget

    add_patient(widget.viewer)
    labels, probs = segmented(qtbot, widget, tiny_checkpoint)
    assert widget.autosave_now() == []  # nothing edited yet
    labels.paint((4, 32, 32), 1)
    labels.paint((4, 5, 5), 0)
    saved = widget.autosave_now()
    assert saved == [recovery.recovery_path(PID)] and saved[0].is_file()
    assert widget.autosave_now() == []  # unchanged since the last save
    edited = np.array(labels.data)

    # a new session: opening the patient offers the autosave
    viewer2 = make_napari_viewer()
    w2 = SegmentWidget(viewer2)
    viewer2.window.add_dock_widget(w2)
    w2.ask = answers = Answers(True)
    add_patient(viewer2)
    qtbot.waitUntil(lambda: f"{PID} tumour (recovered)" in viewer2.layers, timeout=WAIT_MS)
    assert answers.questions == ["Restore autosaved corrections?"]
    restored = viewer2.layers[f"{PID} tumour (recovered)"]
    np.testing.assert_array_equal(restored.data, edited)
    assert restored.mode == "paint"
    np.testing.assert_array_equal(restored.metadata["lgg_ai_mask"], labels.metadata["lgg_ai_mask"])


def test_recovery_files_roundtrip(tmp_path):
    mask = np.zeros((3, 8, 8), np.uint8)
    mask[1, 2:4, 2:5] = 1
    assert recovery.load_recovery("P/../x") is None
    path = recovery.save_recovery("P/../x", mask, ai_mask=np.zeros_like(mask), info={"layer": "x"})
    assert path.parent == tmp_path / "recovery" and ".." not in path.name
    rec = recovery.load_recovery("P/../x")
    np.testing.assert_array_equal(rec.mask, mask)
    assert rec.info["layer"] == "x" and rec.info["tumour_voxels"] == 6
    path.write_bytes(b"garbage")
    with pytest.warns(UserWarning, match="unreadable"):
        assert recovery.load_recovery("P/../x") is None
    assert path.exists()  # a damaged file is kept
    assert recovery.clear_recovery("P/../x") and not recovery.has_recovery("P/../x")


def test_default_model_and_file_picker(make_napari_viewer, qtbot, monkeypatch, tmp_path):
    import napari_lgg_seg.model as model_mod
    from napari_lgg_seg.widgets import segment as segment_mod

    default = make_tiny_checkpoint(tmp_path / "default.pt")
    monkeypatch.setattr(model_mod, "default_model_path", lambda: default)
    viewer = make_napari_viewer()
    add_patient(viewer)
    w = segment_mod.SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert w.model_combo.current_choice == "Default model"
    assert w.loaded_model.path == str(default) and w.segment_button.enabled
    other = make_tiny_checkpoint(tmp_path / "other.pt", seed=1)
    monkeypatch.setattr(segment_mod.QFileDialog, "getOpenFileName", lambda *a, **k: (str(other), ""))
    w.browse_button.native.click()
    assert w.model_combo.choices == (str(default), str(other.resolve()))
    assert w.model_combo.get_choice("Default model") == str(default)
    # the picked file loads in a worker: the window keeps painting, Segment waits for it
    assert "Loading other.pt" in w.model_label.value and w.running and not w.segment_button.enabled
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT_MS)
    assert w.model_combo.current_choice == "other.pt" and w.loaded_model.path == str(other.resolve())
    assert w.segment_button.enabled and "Loaded other.pt" in w.model_label.value


def test_a_picked_checkpoint_loads_off_the_gui_thread_and_a_bad_one_is_reported(widget, qtbot, monkeypatch,
                                                                                 tmp_path):
    """Loading a checkpoint took 80-150 ms on the GUI thread (benchmarks/gui.py): the Checkpoint… button loads it in
    a worker; a file that fails to load is reported once (no retry loop)."""
    import napari_lgg_seg.model as model_mod
    from napari_lgg_seg.widgets import segment as segment_mod

    threads, real = [], model_mod.load_model
    monkeypatch.setattr(model_mod, "load_model", lambda path: threads.append(threading.current_thread()) or real(path))
    add_patient(widget.viewer)
    good, broken = make_tiny_checkpoint(tmp_path / "good.pt"), tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    for path in (good, broken):
        monkeypatch.setattr(segment_mod.QFileDialog, "getOpenFileName", lambda *a, path=path, **k: (str(path), ""))
        widget.browse_button.native.click()
        qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert len(threads) == 2 and threading.main_thread() not in threads
    assert "Could not load the model" in widget.model_label.value and widget.loaded_model is None
    assert not widget.segment_button.enabled
    widget.model_combo.value = str(good.resolve())  # the good one is still listed, and cached
    assert widget.loaded_model.path == str(good.resolve()) and widget.segment_button.enabled and len(threads) == 2


def test_a_runtime_error_in_the_worker_is_reported_and_the_dock_recovers(widget, qtbot, tiny_checkpoint,
                                                                          monkeypatch):
    """issue 12: superqt drops a RuntimeError raised by a generator worker (no `errored`, no `finished`), which
    left the dock on "Segmenting..." with Segment disabled and Stop dead. The job reports it instead."""
    import napari_lgg_seg.inference as inference

    add_patient(widget.viewer)
    assert widget.add_checkpoint(tiny_checkpoint)
    real = inference.iter_predict_any_size

    def out_of_memory(model, images, **kwargs):
        yield 1, len(images), None
        raise RuntimeError("CUDA out of memory. Tried to allocate 20.00 GiB")

    monkeypatch.setattr(inference, "iter_predict_any_size", out_of_memory)
    done = []
    widget.segmentation_done.connect(lambda *args: done.append(args))
    assert widget.segment() is not None
    qtbot.waitUntil(lambda: not widget.running, timeout=20_000)
    assert "failed" in widget.status_label.value and "CUDA out of memory" in widget.status_label.value
    assert widget.segment_button.enabled and not widget.stop_button.enabled
    assert result_layer_names(widget.viewer) == []
    assert len(done) == 1 and done[0][:2] == (PID, None) and "CUDA out of memory" in done[0][2]

    # usable again: a new run starts, and its Stop works
    monkeypatch.setattr(inference, "iter_predict_any_size", real)
    gate = GatedModel(widget.loaded_model.model).module
    widget.loaded_model.model = gate
    widget.batch_size = 2
    assert widget.segment() is not None
    qtbot.waitUntil(gate.entered.is_set, timeout=WAIT_MS)
    assert widget.stop_button.enabled
    widget.stop_button.native.click()
    gate.release.set()
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert widget.status_label.value == "Stopped; no layer was added." and widget.segment_button.enabled
    assert done[-1] == (PID, None, "Stopped; no layer was added.")


def test_status_names_the_patient_on_screen_through_the_manifest(make_napari_viewer, qtbot, tiny_checkpoint):
    """issue 13, bug 2: after the previous patient's layers are swapped for the next one's (as the browser does),
    the Segment status names the patient on screen, not the old one; `segment(patient_id)` picks the patient."""
    from napari_lgg_seg.layers import safe_remove_layers
    from napari_lgg_seg.widgets.segment import segment_current, segment_dock

    viewer = make_napari_viewer()
    w = segment_dock(viewer)
    assert segment_dock(viewer) is w  # one dock per viewer
    w.ask = never_ask
    add_patient(viewer, "PATIENT_A_1")
    add_patient(viewer, "PATIENT_B_2", seed=5)
    assert w.add_checkpoint(tiny_checkpoint)
    done = []
    w.segmentation_done.connect(lambda *args: done.append(args))
    assert segment_current(viewer, "NOT_OPEN_9") is None and "NOT_OPEN_9 is not open" in w.status_label.value
    assert segment_current(viewer, "PATIENT_A_1") is not None
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT_MS)
    labels = viewer.layers["PATIENT_A_1 tumour"]
    assert done == [("PATIENT_A_1", labels, w.status_label.value)] and "Done: PATIENT_A_1" in done[0][2]
    assert viewer.layers.selection.active is labels and labels.mode == "paint"
    safe_remove_layers(viewer, [layer for layer in viewer.layers if "PATIENT_B_2" not in layer.name])
    assert w.current_patient().patient_id == "PATIENT_B_2"
    assert "PATIENT_B_2" in w.status_label.value and "PATIENT_A_1" not in w.status_label.value
    add_patient(viewer, "PATIENT_C_3", seed=6)  # a patient opened next is the one to segment, and named
    assert w.current_patient().patient_id == "PATIENT_C_3" and "PATIENT_C_3" in w.status_label.value
    assert w.segment_button.enabled


def test_result_and_ground_truth_differ_in_colour_through_the_manifest(make_napari_viewer, qtbot, tiny_checkpoint):
    """issue 13 display: the AI result is an orange fill, the ground truth a cyan outline; the result is selected,
    in paint mode."""
    from napari_lgg_seg._sample_data import SAMPLE_PATIENT_ID
    from napari_lgg_seg.display import TRUTH_COLOR, TUMOUR_COLOR

    viewer = make_napari_viewer()
    viewer.open_sample("napari-lgg-seg", "phantom")
    _, w = viewer.window.add_plugin_dock_widget("napari-lgg-seg", "Segment tumour")
    w.ask = never_ask
    assert w.add_checkpoint(tiny_checkpoint)
    w.batch_size = 24
    w.segment_button.native.click()
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT_MS)
    result = viewer.layers[f"{SAMPLE_PATIENT_ID} tumour"]
    truth = viewer.layers[f"{SAMPLE_PATIENT_ID} ground truth"]
    assert viewer.layers.selection.active is result and result.mode == "paint"
    assert truth.contour > 0 and result.contour == 0

    def rgb(layer) -> np.ndarray:
        return np.round(np.asarray(layer.colormap.map(np.array([1])))[0, :3] * 255)

    def hex_rgb(color: str) -> np.ndarray:
        return np.array([int(color[i:i + 2], 16) for i in (1, 3, 5)], float)

    np.testing.assert_allclose(rgb(result), hex_rgb(TUMOUR_COLOR))
    np.testing.assert_allclose(rgb(truth), hex_rgb(TRUTH_COLOR))


def test_safe_remove_layers_leaves_paint_mode_first(make_napari_viewer):
    """issue 13, bug 1: removing the active Labels layer in paint mode and then adding layers segfaults napari;
    `safe_remove_layers` switches it to pan_zoom and moves the selection off it before removing it."""
    from napari_lgg_seg.layers import safe_remove_layers

    viewer = make_napari_viewer()
    image = viewer.add_image(np.zeros((2, 8, 8)), name="image")
    labels = viewer.add_labels(np.zeros((2, 8, 8), np.uint8), name="labels")
    viewer.layers.selection.active = labels
    labels.mode = "paint"
    seen = []
    viewer.layers.events.removing.connect(
        lambda e: seen.append((viewer.layers[e.index].mode, viewer.layers.selection.active)))
    safe_remove_layers(viewer, [labels, viewer.add_labels(np.zeros((2, 8, 8), np.uint8), name="other")])
    assert seen == [("pan_zoom", image), ("pan_zoom", image)]
    assert list(viewer.layers) == [image]
    safe_remove_layers(viewer, [labels])  # already gone: nothing happens


def test_stop_after_the_last_batch_is_reported(widget, qtbot, tiny_checkpoint, monkeypatch):
    """Stop pressed while the worker post-processes the last batch: superqt emits neither `returned` nor `aborted`;
    the dock still says it stopped, adds nothing and tells the workflow."""
    import napari_lgg_seg.inference as inference

    add_patient(widget.viewer)
    assert widget.add_checkpoint(tiny_checkpoint)
    entered, release = threading.Event(), threading.Event()
    real = inference.postprocess

    def gated_postprocess(probs, settings=None):
        entered.set()
        assert release.wait(60), "test never released post-processing"
        return real(probs, settings)

    monkeypatch.setattr(inference, "postprocess", gated_postprocess)
    done = []
    widget.segmentation_done.connect(lambda *args: done.append(args))
    widget.batch_size = 64
    assert widget.segment() is not None
    qtbot.waitUntil(entered.is_set, timeout=WAIT_MS)
    widget.stop_button.native.click()
    release.set()
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert widget.status_label.value == "Stopped; no layer was added." and widget.segment_button.enabled
    assert done == [(PID, None, "Stopped; no layer was added.")]
    assert result_layer_names(widget.viewer) == []


def test_a_tumour_layer_made_elsewhere_is_watched_and_autosaved(widget, qtbot):
    """A prediction layer the dock did not make (the reader opens `segment` output folders as one): its edits update
    the readout, Compare works, autosave keeps it."""
    add_patient(widget.viewer)
    ai = np.zeros((8, 64, 64), np.uint8)
    ai[3, 20:30, 20:30] = 1
    meta = {"lgg_patient_id": PID, "lgg_role": "prediction", "lgg_ai_mask": ai.copy()}
    layer = widget.viewer.add_labels(ai.copy(), name=f"{PID} tumour", metadata=meta)
    assert "100 voxels in 1 slice" in widget.readout_label.value
    layer.paint((5, 40, 40), 1)
    qtbot.waitUntil(lambda: f"{int(layer.data.sum()):,} voxels in 2 slices" in widget.readout_label.value)
    assert widget.compare_with_ai()["voxels_added"] == int(layer.data.sum()) - 100
    assert widget.autosave_now() == [recovery.recovery_path(PID)]


def test_full_collections_freeze_their_survivors_and_removed_layers_are_still_freed(widget, qtbot):
    """Issue 13 (stalls): with a dock open, the survivors of a full collection are frozen, so the next one walks only
    the objects made since; a layer removed later is still freed, and closing the dock unfreezes everything."""
    import gc
    import sys
    import weakref

    if sys.platform == "win32":
        pytest.skip("not on Windows (napari's collection at layer removal guards a driver crash there)")
    viewer = widget.viewer
    layer = viewer.add_labels(np.zeros((4, 16, 16), np.uint8), name="to remove")
    gone = weakref.ref(layer)
    gc.collect()
    assert gc.get_freeze_count() > 10 * len(gc.get_objects())  # most objects are out of the collector's walk
    assert not any(obj is layer for obj in gc.get_objects())  # the layer too
    viewer.layers.remove(layer)
    del layer
    qtbot.wait(20)  # the removal unfreezes on the next event-loop turn
    gc.collect()
    assert gone() is None, "a removed layer must not be kept alive by the freeze"
    gc.collect()
    assert gc.get_freeze_count() > 0
    with qtbot.waitSignal(widget.native.destroyed, timeout=5000):
        widget.native.deleteLater()
    assert gc.get_freeze_count() == 0


def test_the_network_and_the_post_processing_run_below_the_window(widget, qtbot, tiny_checkpoint, monkeypatch):
    """Issue 13 (stalls): on 2 cores the network's threads at the GUI thread's priority made the same layout and paint
    work take two to three times longer; the workers run at a lower priority (Linux: per thread, inherited by the
    torch threads they start) and the GUI thread keeps its own."""
    import os
    import sys
    import threading

    import napari_lgg_seg.inference as inference
    from napari_lgg_seg.layers import WORKER_NICENESS

    if sys.platform != "linux":
        pytest.skip("per-thread priorities are a Linux feature")

    def priority() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    gui_before, seen = priority(), {}
    network, post = inference.iter_predict_any_size, inference.postprocess

    def spy_network(*args, **kwargs):
        seen["network"] = priority()
        yield from network(*args, **kwargs)

    def spy_post(*args, **kwargs):
        seen.setdefault("post-processing", []).append(priority())
        return post(*args, **kwargs)

    monkeypatch.setattr(inference, "iter_predict_any_size", spy_network)
    monkeypatch.setattr(inference, "postprocess", spy_post)
    add_patient(widget.viewer)
    segmented(qtbot, widget, tiny_checkpoint)
    widget.set_threshold(0.3)
    settled(qtbot, widget)
    assert seen["network"] >= WORKER_NICENESS
    assert len(seen["post-processing"]) == 2 and min(seen["post-processing"]) >= WORKER_NICENESS
    assert priority() == gui_before


def test_the_spare_result_layers_give_the_selection_back_through_the_manifest(make_napari_viewer, qtbot,
                                                                              tiny_checkpoint):
    """Issue 13 (stalls): the Segment dock opened from the plugin menu (its viewer is napari's public-only proxy) adds
    the two hidden result layers for the sample patient and gives the user's selection back, as with a plain viewer
    (through the proxy every layer came back as a new wrapper, and the selection stayed on the hidden spare)."""
    viewer = make_napari_viewer()
    viewer.open_sample("napari-lgg-seg", "phantom")
    chosen = viewer.layers.selection.active
    assert chosen is not None
    _dock, w = viewer.window.add_plugin_dock_widget("napari-lgg-seg", "Segment tumour")
    w.ask = never_ask
    assert w.add_checkpoint(tiny_checkpoint)
    spare_names = {"spare result layer (probability)", "spare result layer (tumour)"}
    qtbot.waitUntil(lambda: spare_names <= {layer.name for layer in viewer.layers}, timeout=WAIT_MS)
    qtbot.waitUntil(lambda: viewer.layers.selection.active is chosen, timeout=5000)
    assert set(viewer.layers.selection) == {chosen}
    assert result_layer_names(viewer) == []


def test_the_active_layer_is_found_through_a_docks_proxy(make_napari_viewer):
    """A dock opened from the plugin menu sees napari's public-only proxy of the viewer, whose ``selection.active`` is
    a new wrapper at each access: the correction layer the user selected is still the one found, and a parked
    active layer leaves the selection."""
    from napari_lgg_seg.layers import park_result_layers, tumour_layer

    viewer = make_napari_viewer()
    add_patient(viewer)
    _dock, w = viewer.window.add_plugin_dock_widget("napari-lgg-seg", "Segment tumour")
    proxy = w.viewer
    assert hasattr(proxy, "__wrapped__"), "the dock is expected to see a proxy"
    meta = {"lgg_patient_id": PID, "lgg_role": "prediction"}
    named = viewer.add_labels(np.zeros((8, 64, 64), np.uint8), name=f"{PID} tumour", metadata=dict(meta))
    other = viewer.add_labels(np.zeros((8, 64, 64), np.uint8), name=f"{PID} tumour (second model)", metadata=meta)
    viewer.layers.selection.active = other
    assert tumour_layer(proxy, PID) is other  # the user's choice, not the layer named "<PATIENT> tumour"
    viewer.layers.selection.active = named
    assert park_result_layers(proxy, [named]) == []
    assert viewer.layers.selection.active is not named and named not in viewer.layers.selection
