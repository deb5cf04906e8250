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
    assert worker is not None, w.status_label.text()
    qtbot.waitUntil(lambda: not w.running, timeout=WAIT_MS)
    return worker


def segmented(qtbot, w, checkpoint: Path):
    """Segment the patient already in the viewer; returns (labels layer, probability layer)."""
    assert w.add_checkpoint(checkpoint)
    run_segmentation(qtbot, w)
    labels = w.viewer.layers[f"{PID} tumour"]
    probs = w.viewer.layers[f"{PID} tumour probability"]
    return labels, probs


def set_probabilities(labels, probs_layer, values: np.ndarray) -> None:
    """Replace the stored probabilities by known values (a random network's are arbitrary)."""
    probs_layer.data = values.astype(np.float32)


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
    assert widget.segment_button.isEnabled() and not widget.stop_button.isEnabled()
    voxels = int(np.count_nonzero(labels.data))
    text = widget.readout_label.text()
    assert f"{voxels:,} voxels" in text
    assert f"{voxels * 0.5:,.1f} mm" in text  # voxel volume 2 x 0.5 x 0.5 mm^3


def test_threshold_and_postprocessing_update_labels(widget, qtbot, tiny_checkpoint):
    add_patient(widget.viewer)
    labels, probs = segmented(qtbot, widget, tiny_checkpoint)
    values = ramp(labels.data.shape)
    set_probabilities(labels, probs, values)
    widget.set_threshold(0.3)
    np.testing.assert_array_equal(labels.data, values >= 0.3)
    widget.threshold_slider.setValue(70)  # the slider drives the same update
    assert widget.threshold_spin.value() == pytest.approx(0.7)
    np.testing.assert_array_equal(labels.data, values >= 0.7)
    np.testing.assert_array_equal(labels.metadata["lgg_ai_mask"], values >= 0.7)
    # two blobs: keep-largest drops the smaller one, a minimum size drops both below it
    blobs = np.zeros(labels.data.shape, np.float32)
    blobs[2:5, 10:20, 10:20] = 0.9  # 300 voxels
    blobs[6, 40:45, 40:45] = 0.9  # 25 voxels
    set_probabilities(labels, probs, blobs)
    widget.set_threshold(0.5)
    assert int(labels.data.sum()) == 325
    widget.largest_check.setChecked(True)
    assert int(labels.data.sum()) == 300
    widget.largest_check.setChecked(False)
    widget.min_size_spin.setValue(400)
    assert int(labels.data.sum()) == 0
    assert f"Tumour in '{PID} tumour': 0 voxels in 0 slices" in widget.readout_label.text()


def test_threshold_change_after_an_edit_asks(widget, qtbot, tiny_checkpoint):
    add_patient(widget.viewer)
    labels, probs = segmented(qtbot, widget, tiny_checkpoint)
    values = ramp(labels.data.shape)
    set_probabilities(labels, probs, values)
    widget.set_threshold(0.6)
    labels.paint((0, 10, 10), 1)  # a brush stroke on slice 0, where the ramp is below 0.6
    edited = np.array(labels.data)
    assert int(edited.sum()) > int((values >= 0.6).sum())

    widget.ask = answers = Answers(False)
    widget.set_threshold(0.4)
    assert answers.questions == ["Discard your corrections?"]
    np.testing.assert_array_equal(labels.data, edited)  # corrections kept
    assert widget.threshold_spin.value() == pytest.approx(0.6)  # control put back

    widget.ask = answers = Answers(True)
    widget.set_threshold(0.4)
    assert answers.questions == ["Discard your corrections?"]
    np.testing.assert_array_equal(labels.data, values >= 0.4)


def test_compare_with_ai_counts_a_known_edit(widget, qtbot, tiny_checkpoint):
    add_patient(widget.viewer)
    labels, probs = segmented(qtbot, widget, tiny_checkpoint)
    ai = np.zeros(labels.data.shape, np.float32)
    ai[3, 20:30, 20:30] = 1.0  # 100 voxels
    set_probabilities(labels, probs, ai)
    assert widget.apply_postprocessing()
    assert int(labels.data.sum()) == 100
    # the user erases 20 voxels of the AI mask and adds 30 elsewhere
    labels.data_setitem((np.full(20, 3), np.repeat([20, 21], 10), np.tile(np.arange(20, 30), 2)), 0)
    labels.data_setitem((np.full(30, 5), np.repeat([40, 41, 42], 10), np.tile(np.arange(40, 50), 3)), 1)
    result = widget.compare_with_ai()
    assert result["voxels_changed"] == 50
    assert result["voxels_added"] == 30 and result["voxels_removed"] == 20
    assert result["dice"] == pytest.approx(2 * 80 / (100 + 110))
    text = widget.readout_label.text()
    assert "Dice vs AI: 0.7619" in text and "changed 50 voxels" in text
    assert "110 voxels in 2 slices" in text


def test_without_a_model_segment_is_refused(widget, qtbot, tmp_path):
    from napari_lgg_seg.widgets.segment import NO_MODEL_TEXT

    add_patient(widget.viewer)
    assert widget.model_combo.count() == 0
    assert widget.model_label.text() == NO_MODEL_TEXT
    assert not widget.segment_button.isEnabled()
    assert widget.segment() is None
    assert NO_MODEL_TEXT in widget.status_label.text()
    assert len(widget.viewer.layers) == 4  # nothing was added
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    assert not widget.add_checkpoint(broken)
    assert "Could not load the model" in widget.model_label.text()
    assert not widget.segment_button.isEnabled()
    assert widget.add_checkpoint(make_tiny_checkpoint(tmp_path / "ok.pt"))
    assert widget.segment_button.isEnabled()


def test_checkpoint_card_sets_the_controls(widget, tmp_path):
    card = {"inference": {"threshold": 0.35, "tta": True, "keep_largest": True, "min_lesion_voxels": 7,
                          "fill_holes": True}}
    assert widget.add_checkpoint(make_tiny_checkpoint(tmp_path / "carded.pt", meta=card))
    assert widget.threshold_spin.value() == pytest.approx(0.35)
    assert widget.threshold_slider.value() == 35
    assert widget.tta_check.isChecked() and widget.largest_check.isChecked() and widget.fill_check.isChecked()
    assert widget.min_size_spin.value() == 7
    assert "model card" in widget.model_label.text()


def test_registered_models_appear(widget, tmp_path):
    from napari_lgg_seg.widgets._common import register_model, unregister_model

    path = make_tiny_checkpoint(tmp_path / "finetuned.pt")
    try:
        register_model(path, "Fine-tuned (epoch 3)")
        labels = [widget.model_combo.itemText(i) for i in range(widget.model_combo.count())]
        assert labels == ["Fine-tuned (epoch 3)"]
        assert widget.loaded_model is not None and widget.loaded_model.path == str(path.resolve())
    finally:
        unregister_model(path)
    assert widget.model_combo.count() == 0


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
    assert not widget.segment_button.isEnabled() and widget.stop_button.isEnabled()
    assert widget.segment() is None  # a second run cannot start
    widget.stop_button.click()
    gate.release.set()
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert gate.calls == 1  # stopped between batches
    assert [layer.name for layer in widget.viewer.layers if "tumour" in layer.name] == []
    assert widget.status_label.text() == "Stopped; no layer was added."
    assert widget.segment_button.isEnabled()


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
    assert "closed while segmenting" in widget.status_label.text()


def test_result_layers_are_added_one_event_loop_turn_apart(widget, qtbot, tiny_checkpoint):
    """The probability layer, the Labels layer and the brush set-up are separate GUI steps (the window repaints
    between them); the dock counts as running until the last one, and a patient closed in between stops them."""
    add_patient(widget.viewer)
    assert widget.add_checkpoint(tiny_checkpoint)
    seen = []
    widget.viewer.layers.events.inserted.connect(lambda e: seen.append((e.value.name, widget.running)))
    run_segmentation(qtbot, widget)
    assert seen == [(f"{PID} tumour probability", True), (f"{PID} tumour", True)]
    assert not widget.running and widget.segment_button.isEnabled()
    assert widget.viewer.layers.selection.active.name == f"{PID} tumour"
    assert widget.viewer.layers[f"{PID} tumour"].mode == "paint"
    # closing the patient between two steps: the remaining steps are dropped with a message
    patient = widget.current_patient()
    ran = []
    widget._adding_result = True
    widget._run_gui_steps(patient, [lambda: widget.viewer.layers.clear(), lambda: ran.append("second step")])
    qtbot.waitUntil(lambda: not widget.running, timeout=WAIT_MS)
    assert ran == [] and "closed while the result was being added" in widget.status_label.text()


def test_single_2d_image_is_replicated(widget, qtbot, tiny_checkpoint):
    from napari_lgg_seg.widgets._common import find_patients

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
    from napari_lgg_seg.widgets._common import find_patients

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


def test_volume_readout_units():
    from napari_lgg_seg.metrics import dice
    from napari_lgg_seg.widgets._common import volume_readout

    mask = np.zeros((4, 5, 5), np.uint8)
    mask[1, :2, :2] = 1
    mask[3, 0, 0] = 1
    assert volume_readout(mask) == "5 voxels in 2 slices"
    assert volume_readout(mask, (1, 1, 1)) == "5 voxels in 2 slices"
    assert volume_readout(mask, (3, 0.5, 0.5)) == "5 voxels in 2 slices = 3.8 mm\u00b3"
    assert dice(mask, mask) == 1.0 and dice(mask, np.zeros_like(mask)) == 0.0
    assert dice(np.zeros(3), np.zeros(3)) == 1.0


def test_default_model_and_file_picker(make_napari_viewer, monkeypatch, tmp_path):
    import napari_lgg_seg.model as model_mod
    from napari_lgg_seg.widgets import segment as segment_mod

    default = make_tiny_checkpoint(tmp_path / "default.pt")
    monkeypatch.setattr(model_mod, "default_model_path", lambda: default)
    viewer = make_napari_viewer()
    add_patient(viewer)
    w = segment_mod.SegmentWidget(viewer)
    viewer.window.add_dock_widget(w)
    assert w.model_combo.currentText() == "Default model"
    assert w.loaded_model.path == str(default) and w.segment_button.isEnabled()
    other = make_tiny_checkpoint(tmp_path / "other.pt", seed=1)
    monkeypatch.setattr(segment_mod.QFileDialog, "getOpenFileName", lambda *a, **k: (str(other), ""))
    w.browse_button.click()
    assert [w.model_combo.itemText(i) for i in range(w.model_combo.count())] == ["Default model", "other.pt"]
    assert w.model_combo.currentText() == "other.pt" and w.loaded_model.path == str(other.resolve())
