"""The Segment dock's Qt-free core (napari_lgg_seg.segmentation): napari's ViewerModel, tiny random-weight models."""

from __future__ import annotations

import ast
import subprocess
import sys
from types import SimpleNamespace

import numpy as np
import pytest

from conftest import make_tiny_checkpoint
from napari_lgg_seg import recovery
from napari_lgg_seg import segmentation as core
from napari_lgg_seg._reader import patient_layer_data
from napari_lgg_seg.io import Patient
from napari_lgg_seg.layers import find_patients, mark_exported
from napari_lgg_seg.sample import make_phantom

PID = "PHANTOM_07_20000101"


@pytest.fixture
def viewer():
    from napari.components import ViewerModel

    return ViewerModel()


def add_patient(viewer, pid: str = PID, n_slices: int = 4, size: int = 32, seed: int = 3):
    images, masks = make_phantom(n_slices=n_slices, size=size, seed=seed)
    patient = Patient(pid, images, masks, list(range(1, n_slices + 1)), [], [None] * n_slices, "")
    for data, kwargs, layer_type in patient_layer_data(patient):
        getattr(viewer, f"add_{layer_type}")(data, **kwargs)
    return find_patients(viewer)[pid]


def add_result(viewer, mask: np.ndarray, pid: str = PID):
    """A tumour layer as the dock makes it: the AI output kept in its metadata."""
    meta = {"lgg_patient_id": pid, "lgg_role": "prediction", "lgg_ai_mask": mask.copy()}
    return viewer.add_labels(mask.copy(), name=f"{pid} tumour", metadata=meta)


def settings(**values):
    from napari_lgg_seg.inference import PostProcessing

    return PostProcessing(**values)


def test_the_core_imports_neither_qt_nor_torch():
    watched = ("qtpy", "PyQt5", "PyQt6", "PySide6", "torch", "napari_lgg_seg.widgets")
    code = f"import sys, napari_lgg_seg.segmentation; print(sorted(m for m in {watched!r} if m in sys.modules))"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert ast.literal_eval(out.stdout.strip()) == []


def test_model_choices_default_first_one_entry_per_path():
    registered = [("Fine-tuned", "/m/ft.pt"), ("Again", "/m/default.pt")]
    chosen = {"/m/mine.pt": "mine.pt", "/m/ft.pt": "ft.pt"}
    assert core.model_choices("/m/default.pt", registered, chosen) == [
        ("Default model", "/m/default.pt"), ("Fine-tuned", "/m/ft.pt"), ("mine.pt", "/m/mine.pt")]
    assert core.model_choices(None, [], {}) == []
    assert core.model_choices(None, [], {"/a.pt": "a.pt"}) == [("a.pt", "/a.pt")]


def test_load_cached_loads_once_and_reports_a_broken_file(tmp_path):
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    cache: dict = {}
    loaded, error = core.load_cached(str(broken), cache)
    assert loaded is None and error.startswith("Could not load the model") and cache == {}
    assert core.model_text(None, error, has_choices=True) == error
    path = str(make_tiny_checkpoint(tmp_path / "tiny.pt"))
    loaded, error = core.load_cached(path, cache)
    assert error is None and loaded.path == path and cache == {path: loaded}
    assert core.load_cached(path, cache)[0] is loaded
    assert core.model_text(loaded, None, True) == "Loaded tiny.pt (no model card defaults; using the settings below)"
    assert core.model_text(None, None, False) == core.NO_MODEL_TEXT
    assert core.model_text(None, None, True) == core.CHOOSE_MODEL_TEXT
    carded = SimpleNamespace(path="/m/c.pt", inference_defaults={"threshold": 0.3})
    assert core.model_text(carded, None, True) == "Loaded c.pt (defaults from its model card)"


def test_control_values_and_settings_from_controls():
    card = {"threshold": 0.99, "tta": 1, "keep_largest": 0, "min_lesion_voxels": "7", "unknown": 3}
    assert core.control_values(card) == {"threshold": 0.95, "tta": True, "keep_largest": False,
                                         "min_lesion_voxels": 7}
    assert core.control_values({"threshold": 0.0}) == {"threshold": 0.05}
    assert core.control_values({}) == {}
    made = core.settings_from_controls({"threshold": 0.350000001, "tta": True, "keep_largest": True,
                                        "fill_holes": False, "min_lesion_voxels": 5})
    assert made == settings(threshold=0.35, keep_largest=True, min_lesion_voxels=5)


def test_discard_question_counts_the_corrections(viewer):
    ai = np.zeros((4, 8, 8), np.uint8)
    layer = add_result(viewer, ai)
    assert core.discard_question(layer) is None
    layer.data[1, :3, :3] = 1
    title, text = core.discard_question(layer)
    assert title == "Discard your corrections?" and "has 9 voxels you corrected" in text
    core.set_result_mask(layer, np.ones_like(ai), settings(threshold=0.3))
    assert core.discard_question(layer) is None
    assert layer.metadata["lgg_postprocessing"]["threshold"] == 0.3
    np.testing.assert_array_equal(layer.metadata["lgg_ai_mask"], np.ones_like(ai))


def test_refusal_and_replace_question(viewer):
    patient = add_patient(viewer)
    loaded = object()
    assert core.refusal("OTHER_1", patient, loaded, True) == ("OTHER_1 is not open; nothing was segmented.", True)
    assert core.refusal(None, patient, None, False) == (core.NO_MODEL_TEXT, False)
    assert core.refusal(None, patient, None, True) == ("Choose a model first.", False)
    assert core.refusal(None, None, loaded, True) == (core.OPEN_PATIENT_TEXT, False)
    assert core.refusal(PID, patient, loaded, True) is None
    assert core.replace_question(viewer, PID) is None  # no result yet
    layer = add_result(viewer, np.zeros((4, 32, 32), np.uint8))
    assert core.replace_question(viewer, PID) is None  # not edited
    layer.data[0, 0, 0] = 1
    assert core.replace_question(viewer, PID)[0] == "Replace your corrections?"
    mark_exported(layer)
    assert core.replace_question(viewer, PID) is None


def test_patient_showing_by_channel_or_metadata(viewer):
    patient = add_patient(viewer)
    flair = patient.reference
    assert core.patient_showing(viewer, flair).patient_id == PID
    truth = viewer.layers[f"{PID} ground truth"]
    assert core.patient_showing(viewer, truth).patient_id == PID  # named by its metadata
    assert core.patient_showing(viewer, truth, by_metadata=False) is None


def test_a_run_checks_its_result(viewer):
    patient = add_patient(viewer)
    run = core.SegmentRun(patient, model=None, model_label="m", settings=settings())
    probs, mask = np.full((4, 32, 32), 0.7, np.float64), np.ones((4, 32, 32), np.uint8)
    fitted_probs, fitted_mask = run.check(viewer, (probs, mask))
    assert fitted_probs.dtype == np.float32 and fitted_mask is mask
    with pytest.raises(core.RunFailed) as failed:
        run.check(viewer, "RuntimeError: CUDA out of memory")
    assert failed.value.args == (f"Segmentation of {PID} failed: RuntimeError: CUDA out of memory", True)
    with pytest.raises(core.RunFailed, match="does not fit the image"):
        run.check(viewer, (probs[:, :16], mask[:, :16]))
    viewer.layers.clear()
    with pytest.raises(core.RunFailed, match="closed while segmenting") as failed:
        run.check(viewer, (probs, mask))
    assert failed.value.args[1] is False
    single = viewer.add_image(np.zeros((32, 32), np.uint8), name="one slice")
    run = core.SegmentRun(core.patient_showing(viewer, single), None, "m", settings())
    assert run.check(viewer, (probs[:1], mask[:1]))[0].shape == (32, 32)


def test_segment_volume_yields_progress_and_post_processes(tmp_path):
    from napari_lgg_seg.inference import postprocess
    from napari_lgg_seg.model import load_model

    loaded = load_model(make_tiny_checkpoint(tmp_path / "tiny.pt"))
    images, _ = make_phantom(n_slices=5, size=64, seed=1)
    timing: dict = {}
    job = core.segment_volume(loaded.model, images, "cpu", False, 2, settings(threshold=0.5), 64, timing)
    progress = []
    with pytest.raises(StopIteration) as end:
        while True:
            progress.append(next(job))
    probs, mask = end.value.value
    assert progress[-1] == (5, 5) and len(progress) >= 3
    assert probs.dtype == np.float32 and probs.shape == (5, 64, 64)
    np.testing.assert_array_equal(mask, postprocess(probs, settings(threshold=0.5)))
    assert set(timing) == {"network_s", "postprocess_s"}


def run_placement(viewer, patient, mask, label="tiny"):
    probs = mask.astype(np.float32) * 0.9
    placed = core.ResultPlacement(viewer, patient, probs, mask, "/m/tiny.pt", label, settings(threshold=0.4))
    placed.place_probabilities()
    labels = placed.place_labels()
    placed.select_labels()
    return labels


def test_a_result_is_placed_and_refilled(viewer):
    patient = add_patient(viewer)
    mask = np.zeros((4, 32, 32), np.uint8)
    mask[1, 5:9, 5:9] = 1
    labels = run_placement(viewer, patient, mask)
    probs = viewer.layers[f"{PID} tumour probability"]
    assert labels.name == f"{PID} tumour" and viewer.layers.selection.active is labels
    assert labels.selected_label == 1 and labels.brush_size == 10 and not probs.visible
    meta = dict(labels.metadata)
    assert meta["lgg_role"] == "prediction" and meta["lgg_model"] == "/m/tiny.pt" and meta["lgg_model_label"] == "tiny"
    assert meta["lgg_result_id"] == probs.metadata["lgg_result_id"] and meta["lgg_postprocessing"]["threshold"] == 0.4
    np.testing.assert_array_equal(meta["lgg_ai_mask"], mask)
    count = len(viewer.layers)
    again = run_placement(viewer, patient, np.ones_like(mask), label="other")
    assert again is labels and len(viewer.layers) == count  # refilled, not added
    assert viewer.layers[f"{PID} tumour probability"] is probs and labels.metadata["lgg_model_label"] == "other"
    assert labels.metadata["lgg_result_id"] == probs.metadata["lgg_result_id"] != meta["lgg_result_id"]
    np.testing.assert_array_equal(labels.data, 1)


def test_spare_layers_are_added_one_at_a_time_and_then_refilled(viewer):
    patient = add_patient(viewer)
    chosen = viewer.layers.selection.active
    kind, give_back, more = core.add_spare_for(viewer, patient)
    assert (kind, more) == ("image", True)
    give_back()
    kind, give_back, more = core.add_spare_for(viewer, patient)
    assert (kind, more) == ("labels", False)
    give_back()
    assert viewer.layers.selection.active is chosen
    assert core.add_spare_for(viewer, patient) is None  # both there
    spares = [layer for layer in viewer.layers if layer.metadata.get("lgg_role") == "spare"]
    assert len(spares) == 2 and all(not la.visible and la.data.size == 1 for la in spares)
    count = len(viewer.layers)
    labels = run_placement(viewer, patient, np.zeros((4, 32, 32), np.uint8))
    assert len(viewer.layers) == count and labels in spares and labels.visible
    assert core.add_spare_for(viewer, patient) is None  # the patient has its result


def test_readout_compare_and_status_texts(viewer):
    assert core.readout_text(None, "ignored") == ""
    patient = add_patient(viewer)
    assert core.patient_status(patient, None, viewer) == "" and core.patient_status(None, object(), viewer) == ""
    assert core.patient_status(patient, object(), viewer) == f"{PID}: press Segment."
    mask = np.zeros((4, 32, 32), np.uint8)
    mask[2, :2, :5] = 1
    layer = add_result(viewer, mask)
    assert core.patient_status(patient, object(), viewer) == f"{PID}: '{PID} tumour' is ready for the brush."
    assert core.readout_text(layer) == f"Tumour in '{PID} tumour': 10 voxels in 1 slice"
    assert core.readout_text(layer, "Dice") == f"Tumour in '{PID} tumour': 10 voxels in 1 slice\nDice"
    result = {"dice": 0.5, "voxels_added": 1200, "voxels_removed": 3}
    assert core.compare_text(result) == "Dice vs AI: 0.5000; you changed 1,203 voxels (+1,200 / -3)"
    assert core.compare_text(None) == "No AI output to compare with."
    assert core.done_text(PID, "tiny").startswith(f"Done: {PID} segmented with tiny.")


def test_autosave_saves_edited_layers_once_per_change(viewer, monkeypatch):
    add_patient(viewer)
    layer = add_result(viewer, np.zeros((4, 32, 32), np.uint8))
    last: dict = {}
    assert core.autosave(viewer, last) == ([], [])  # not edited
    layer.data[1, 2, 2] = 1
    layer.refresh()
    assert core.autosave(viewer, last) == ([recovery.recovery_path(PID)], [])
    assert core.autosave(viewer, last) == ([], [])  # unchanged since
    layer.data[1, 3, 3] = 1

    def full_disk(*args, **kwargs):
        raise OSError("No space left on device")

    monkeypatch.setattr(recovery, "save_recovery", full_disk)
    assert core.autosave(viewer, last) == ([], ["Autosave failed: No space left on device"])


def test_recovery_is_offered_once_and_restored(viewer):
    patient = add_patient(viewer)
    offered: set = set()
    assert core.pending_recovery(viewer, PID, offered) is None and offered == set()  # nothing stored
    mask = np.zeros((4, 32, 32), np.uint8)
    mask[2, 4:6, 4:6] = 1
    recovery.save_recovery(PID, mask, ai_mask=np.zeros_like(mask), info={"lgg_model": "/m/tiny.pt"})
    rec = core.pending_recovery(viewer, PID, offered)
    assert rec is not None and offered == {PID}
    assert core.pending_recovery(viewer, PID, offered) is None  # once per session
    title, text = core.recovery_question(PID, rec)
    assert title == "Restore autosaved corrections?" and "(4 tumour voxels)" in text
    last: dict = {}
    layer = core.restore_autosave(viewer, patient, rec, last)
    assert layer.name == f"{PID} tumour (recovered)" and layer.mode == "paint"
    assert viewer.layers.selection.active is layer and last == {id(layer): recovery.mask_digest(mask)}
    np.testing.assert_array_equal(layer.data, mask)
    assert core.pending_recovery(viewer, PID, set()) is None  # a layer already holds it
    wrong = recovery.Recovery(mask=np.zeros((2, 8, 8), np.uint8), ai_mask=None, path=rec.path)
    with pytest.raises(ValueError, match="not restored"):
        core.restore_autosave(viewer, patient, wrong, last)


class Turns:
    """A ``later`` for ``SegmentSession``: keeps the callbacks, runs them on ``run()`` (one turn each)."""

    def __init__(self) -> None:
        self.queued: list[tuple] = []

    def __call__(self, delay_ms: int, callback) -> None:
        self.queued.append((callback, delay_ms))

    def run(self) -> int:
        """Run every queued callback, including those queued meanwhile; returns how many ran."""
        ran = 0
        while self.queued:
            callback, _ = self.queued.pop(0)
            callback()
            ran += 1
        return ran


def make_session(viewer, answer: bool = True):
    asked, restored, turns = [], [], Turns()

    def ask(title, text):
        asked.append(title)
        return answer

    session = core.SegmentSession(viewer, ask, turns, lambda patient, rec: restored.append((patient, rec)) or "layer")
    return session, turns, asked, restored


def test_session_selects_models_and_drops_a_broken_file(viewer, tmp_path):
    session, *_ = make_session(viewer)
    broken = tmp_path / "broken.pt"
    broken.write_bytes(b"not a checkpoint")
    key = session.add_checkpoint_file(broken)
    assert key == str(broken.resolve()) and ("broken.pt", key) in session.model_choices("/m/default.pt")
    text, is_error = session.select_model(key, has_choices=True)
    assert is_error and text.startswith("Could not load the model") and session.loaded is None
    assert session.checkpoint_files == {}  # a file that does not load leaves the list
    path = str(make_tiny_checkpoint(tmp_path / "tiny.pt"))
    session.add_checkpoint_file(path, "Tiny")
    assert session.model_choices("/m/default.pt") == [("Default model", "/m/default.pt"), ("Tiny", path)]
    assert session.select_model(path, True) == ("Loaded tiny.pt (no model card defaults; using the settings below)",
                                                False)
    assert session.loaded.path == path and core.current_model_path() == path
    assert session.select_model(path, True) is None  # already the current one
    assert session.select_model(None, False) == (core.NO_MODEL_TEXT, False) and session.loaded is None


def test_session_reads_layer_events(viewer):
    session, turns, asked, restored = make_session(viewer)
    patient = add_patient(viewer)
    flair = patient.reference
    watch, opened = session.layer_event(SimpleNamespace(type="inserted", value=flair))
    assert watch is None and opened.patient_id == PID
    assert [delay for _, delay in turns.queued] == [0]  # an LGG patient's recovery check
    assert turns.run() == 1 and asked == [] and restored == []  # nothing autosaved
    watch, opened = session.layer_event(SimpleNamespace(type="renamed", index=viewer.layers.index(flair)))
    assert opened.patient_id == PID and len(turns.queued) == 1  # nothing was offered yet: checked again
    result = add_result(viewer, np.zeros((4, 32, 32), np.uint8))
    assert session.layer_event(SimpleNamespace(type="inserted", value=result)) == (result, None)
    assert session.layer_event(SimpleNamespace(type="renamed", index=99)) == (None, None)
    session.last_autosave[id(result)] = "digest"
    assert session.layer_event(SimpleNamespace(type="removed", value=result)) == (None, None)
    assert session.last_autosave == {}


def test_session_offers_a_recovery_once(viewer):
    session, turns, asked, restored = make_session(viewer)
    patient = add_patient(viewer)
    mask = np.zeros((4, 32, 32), np.uint8)
    mask[1, 2:4, 2:4] = 1
    recovery.save_recovery(PID, mask)
    session.queue_recovery_check(PID)
    turns.run()
    assert asked == ["Restore autosaved corrections?"] and restored[0][0].patient_id == patient.patient_id
    np.testing.assert_array_equal(restored[0][1].mask, mask)
    session.queue_recovery_check(PID)
    assert turns.queued == [] and session.check_recovery(PID) is None and len(asked) == 1
    declining, turns, asked, restored = make_session(viewer, answer=False)
    assert declining.check_recovery(PID) is None and asked and restored == []
    assert declining.check_recovery("NOT_OPEN_1") is None


def test_session_hints_and_patient_changes(viewer):
    session, turns, *_ = make_session(viewer)
    assert session.hint("", has_choices=False, patient=None) == core.NO_MODEL_TEXT
    assert session.hint(core.NO_MODEL_TEXT, True, None) == core.OPEN_PATIENT_TEXT
    patient = add_patient(viewer)
    assert session.hint(core.OPEN_PATIENT_TEXT, True, patient) == ""
    assert session.hint("Segmenting…", True, patient) is None and session.hint(None, True, patient) is None
    session.compare_text = "Dice"
    assert session.patient_changed(patient) and session.patient_id == PID and session.compare_text == ""
    session.compare_text = "Dice"
    assert not session.patient_changed(patient) and session.compare_text == "Dice"
    assert session.patient_changed(None) and session.patient_id is None


def test_session_queues_spare_layers_one_turn_apart(viewer):
    session, turns, *_ = make_session(viewer)
    patient = add_patient(viewer)
    session.patient_changed(patient)
    session.queue_spare_layer()
    assert len(turns.queued) == 1  # queued once
    turns.run()
    assert not any(la.metadata.get("lgg_role") == "spare" for la in viewer.layers)  # no model: nothing needed
    session.loaded = object()
    session.adding_result = True
    session.queue_spare_layer()
    turns.run()
    assert not any(la.metadata.get("lgg_role") == "spare" for la in viewer.layers)  # busy adding a result
    session.adding_result = False
    session.queue_spare_layer()
    assert turns.run() == 3  # the image spare, the labels spare, then its give-back a turn later
    spares = [la for la in viewer.layers if la.metadata.get("lgg_role") == "spare"]
    assert len(spares) == 2 and all(delay == session.step_delay_ms for _, delay in turns.queued)


def test_session_recompute_source_asks_before_discarding(viewer):
    session, _, asked, _ = make_session(viewer, answer=False)
    patient = add_patient(viewer)
    assert session.recompute_source(None) == (None, False)
    mask = np.zeros((4, 32, 32), np.uint8)
    labels = run_placement(viewer, patient, mask)
    prob_layer = viewer.layers[f"{PID} tumour probability"]
    assert session.recompute_source(labels) == (prob_layer, False) and asked == []  # nothing corrected
    labels.data[0, :2, :2] = 1
    assert session.recompute_source(labels) == (None, True) and asked == ["Discard your corrections?"]
    end = session.track_job("worker", labels)
    assert session.postprocessing and session.recompute_source(labels) == (prob_layer, False)  # asked already
    end()
    assert not session.postprocessing
    new = np.ones_like(mask)
    assert not session.set_mask(labels, prob_layer, settings(threshold=0.3), settings(threshold=0.4), new)
    assert session.set_mask(labels, prob_layer, settings(threshold=0.3), settings(threshold=0.3), new)
    np.testing.assert_array_equal(labels.data, new)
    assert labels.metadata["lgg_postprocessing"]["threshold"] == 0.3


def test_session_new_run_and_gui_steps(viewer):
    session, turns, asked, _ = make_session(viewer, answer=False)
    patient = add_patient(viewer)
    with pytest.raises(core.RunFailed, match="Choose a model first"):
        session.new_run(None, patient, "tiny", settings(), has_choices=True)
    session.loaded = SimpleNamespace(path="/m/tiny.pt")
    run, images = session.new_run(None, patient, "tiny", settings(), True)
    assert session.run is run and run.patient_id == PID and images.shape == (4, 32, 32, 3)
    labels = add_result(viewer, np.zeros((4, 32, 32), np.uint8))
    labels.data[0, 0, 0] = 1
    assert session.new_run(None, patient, "tiny", settings(), True) is None and asked == ["Replace your corrections?"]
    ran, ended = [], []
    session.run_steps(patient, [lambda: ran.append(1), lambda: ran.append(2)], lambda *end: ended.append(end))
    assert ran == [1] and ended == []  # the next step on a later turn
    turns.run()
    assert ran == [1, 2] and ended == [(PID, None)]
    session.run_steps(patient, [viewer.layers.clear, lambda: ran.append(3)], lambda *end: ended.append(end))
    turns.run()
    assert ran == [1, 2] and ended[-1][0] == PID and "closed while the result was being added" in ended[-1][1]


def test_session_places_a_result_in_steps_and_finds_open_results(viewer):
    session, turns, *_ = make_session(viewer)
    patient = add_patient(viewer)
    session.loaded = SimpleNamespace(path="/m/tiny.pt")
    run, _ = session.new_run(None, patient, "tiny", settings(threshold=0.4), True)
    mask = np.zeros((4, 32, 32), np.uint8)
    mask[1, 3:5, 3:5] = 1
    watched, done, ended = [], [], []
    session.compare_text = "Dice"
    steps = session.placement_steps(run, mask * 0.9, mask, run.settings, watched.append, done.append)
    assert session.adding_result and len(steps) == 4
    session.run_steps(patient, steps, lambda *end: ended.append(end))
    turns.run()
    labels = viewer.layers[f"{PID} tumour"]
    assert watched == [labels] and done == [labels] and ended == [(PID, None)]
    assert labels.mode == "paint" and session.compare_text == ""
    np.testing.assert_array_equal(labels.data, mask)
    fresh, turns, *_ = make_session(viewer)
    assert fresh.open_results() == [labels] and [delay for _, delay in turns.queued] == [0]  # a recovery check
