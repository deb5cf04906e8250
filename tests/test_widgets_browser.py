"""The patient browser dock: Previous / Next swap the open patient's layers."""

from __future__ import annotations

import numpy as np
import pytest

from napari_lgg_seg._reader import patient_layer_data
from napari_lgg_seg.io import load_patient


@pytest.fixture(autouse=True)
def _recovery_dir(monkeypatch, tmp_path):
    monkeypatch.setenv("LGG_SEG_RECOVERY_DIR", str(tmp_path / "recovery"))


def patients_open(viewer) -> set:
    """Patients with layers in the viewer (None: a layer of no patient); result layers parked for the next patient's
    result (``_common.park_result_layers``) must be hidden, one voxel and of no patient, and are not counted."""
    spares = [layer for layer in viewer.layers if layer.metadata.get("lgg_role") == "spare"]
    assert all(not la.visible and la.data.size == 1 and set(la.metadata) == {"lgg_role"} for la in spares)
    return {layer.metadata.get("lgg_patient_id") for layer in viewer.layers if not any(layer is s for s in spares)}


def fail_ask(title, text):
    raise AssertionError(f"unexpected question: {title}")


@pytest.fixture
def setup(make_napari_viewer, phantom_root):
    from napari_lgg_seg.widgets.browser import PatientBrowser

    viewer = make_napari_viewer()
    browser = PatientBrowser(viewer, root=str(phantom_root))
    viewer.window.add_dock_widget(browser, name="Patient browser")
    browser.ask = fail_ask
    names = sorted(p.name for p in phantom_root.iterdir())
    return viewer, browser, names


def test_next_and_previous_switch_patients(setup, phantom_root):
    viewer, browser, names = setup
    assert browser.list.count() == 3
    assert patients_open(viewer) == {names[0]}
    assert [layer.name for layer in viewer.layers][-2] == f"{names[0]} FLAIR"
    assert not browser.prev_button.enabled and browser.next_button.enabled
    extra = viewer.add_points(np.zeros((1, 3)), name="my notes")  # not a patient layer: kept

    browser.next_button.native.click()
    assert patients_open(viewer) == {names[1], None}
    assert [layer.name for layer in viewer.layers] == [
        "my notes", f"{names[1]} pre-contrast", f"{names[1]} post-contrast", f"{names[1]} FLAIR",
        f"{names[1]} ground truth"]
    np.testing.assert_array_equal(viewer.layers[f"{names[1]} FLAIR"].data,
                                  load_patient(phantom_root / names[1]).images[..., 1])
    assert browser.list.currentRow() == 1 and browser.current_patient_id == names[1]
    assert "Patient 2 of 3" in browser.status_label.value

    assert browser.next()
    assert patients_open(viewer) == {names[2], None}
    assert not browser.next_button.enabled and not browser.next()
    browser.prev_button.native.click()
    browser.prev_button.native.click()
    assert patients_open(viewer) == {names[0], None}
    assert extra in viewer.layers
    browser.list.setCurrentRow(2)  # clicking in the list
    assert patients_open(viewer) == {names[2], None}


def _prediction(viewer, pid, edited: bool):
    flair = viewer.layers[f"{pid} FLAIR"]
    ai = np.zeros(flair.data.shape, np.uint8)
    ai[1, 5:9, 5:9] = 1
    meta = {"lgg_patient_id": pid, "lgg_role": "prediction", "lgg_ai_mask": ai.copy(), "lgg_result_id": "r1"}
    layer = viewer.add_labels(ai.copy(), name=f"{pid} tumour", metadata=meta)
    viewer.add_image(ai.astype(np.float32), name=f"{pid} tumour probability", visible=False,
                     metadata={"lgg_patient_id": pid, "lgg_role": "probability", "lgg_result_id": "r1"})
    if edited:
        layer.data_setitem((np.array([2]), np.array([3]), np.array([3])), 1)
    return layer


def test_unedited_results_are_closed_with_the_patient(setup):
    viewer, browser, names = setup
    _prediction(viewer, names[0], edited=False)
    assert browser.next()
    # its layers are off screen; its two result layers are parked for the next result (checked by patients_open)
    assert patients_open(viewer) == {names[1]}
    assert sorted(la._type_string for la in viewer.layers if la.metadata.get("lgg_role") == "spare") == [
        "image", "labels"]


def test_unexported_corrections_ask_first(setup):
    from napari_lgg_seg.layers import mark_exported

    viewer, browser, names = setup
    layer = _prediction(viewer, names[0], edited=True)
    questions = []

    def no(title, text):
        questions.append(text)
        return False

    browser.ask = no
    assert not browser.next()
    assert len(questions) == 1 and f"'{names[0]} tumour'" in questions[0]
    assert patients_open(viewer) == {names[0]} and browser.list.currentRow() == 0
    assert browser.current_patient_id == names[0]

    browser.ask = lambda title, text: True
    assert browser.next()
    # the corrections are kept for export, hidden with their patient (issue 13, bug 2), and autosaved
    assert layer not in viewer.layers and not layer.visible and browser.session.kept[names[0]] == [layer]
    assert f"{names[0]} FLAIR" not in viewer.layers and f"{names[0]} tumour probability" not in viewer.layers
    assert patients_open(viewer) == {names[1]}
    assert browser.states[names[0]] == "corrected"

    mark_exported(layer)  # once exported, switching does not ask and closes it
    browser.ask = fail_ask
    assert browser.previous()
    assert browser.next()
    assert patients_open(viewer) == {names[1]}  # exported: parked for the next result like any other result
    assert layer.metadata == {"lgg_role": "spare"}


def test_first_patient_layers_for_the_reader(make_napari_viewer, phantom_root):
    from napari.layers import Layer

    from napari_lgg_seg.widgets.browser import PatientBrowser

    viewer = make_napari_viewer()
    browser = PatientBrowser(viewer, root=str(phantom_root), load_first=False)
    assert len(viewer.layers) == 0
    names = sorted(p.name for p in phantom_root.iterdir())
    layers = browser.first_patient_layers()
    expected = patient_layer_data(load_patient(phantom_root / names[0]))
    assert [kw["name"] for _, kw, _ in layers] == [kw["name"] for _, kw, _ in expected]
    for data, kwargs, kind in layers:
        viewer.add_layer(Layer.create(data, kwargs, kind))
    assert browser.current_patient_id == names[0]
    assert browser.next()
    assert patients_open(viewer) == {names[1]}


def test_unreadable_patient_keeps_the_current_one(setup, phantom_root):
    viewer, browser, names = setup
    (phantom_root / names[1] / f"{names[1]}_4.tif").write_bytes(b"II*\x00broken")
    assert not browser.next()
    assert f"{names[1]}_4.tif" in browser.status_label.value
    assert patients_open(viewer) == {names[0]} and browser.list.currentRow() == 0


def test_root_without_patients(make_napari_viewer, tmp_path):
    from napari_lgg_seg.widgets.browser import PatientBrowser

    viewer = make_napari_viewer()
    browser = PatientBrowser(viewer)
    assert browser.set_root(tmp_path) == 0
    assert "No patient folders" in browser.status_label.value
    assert not browser.next_button.enabled and not browser.prev_button.enabled


def test_switching_never_removes_a_labels_layer_in_paint_mode(setup):
    """Issue 13, bug 1: removing the active Labels layer in paint mode and then adding layers segfaults napari."""
    viewer, browser, names = setup
    layer = _prediction(viewer, names[0], edited=False)
    viewer.layers.selection.active = layer
    layer.mode = "paint"
    seen = []
    viewer.layers.events.removing.connect(
        lambda event: seen.append((viewer.layers[event.index].name, getattr(viewer.layers[event.index], "mode", None),
                                   viewer.layers[event.index] is viewer.layers.selection.active)))
    assert browser.next()
    # not removed at all: parked for the next result, out of paint mode and not selected
    assert layer in viewer.layers and layer.metadata == {"lgg_role": "spare"}
    assert layer.mode == "pan_zoom" and viewer.layers.selection.active is not layer
    assert all(mode in (None, "pan_zoom") and not active for _, mode, active in seen)
    assert patients_open(viewer) == {names[1]}

    # a correction not exported is removed (and kept by the browser): out of paint mode first
    layer = _prediction(viewer, names[1], edited=True)
    viewer.layers.selection.active = layer
    layer.mode = "paint"
    name = layer.name
    browser.ask = lambda title, text: True
    assert browser.next()
    assert (name, "pan_zoom", False) in seen
    assert all(mode in (None, "pan_zoom") and not active for _, mode, active in seen)
    assert patients_open(viewer) == {names[2]}


def _different_sizes_root(tmp_path):
    from napari_lgg_seg.sample import write_phantom_dataset

    root = tmp_path / "sizes"
    write_phantom_dataset(root, n_patients=1, n_slices=6, size=64, prefix="SHORT")
    write_phantom_dataset(root, n_patients=1, n_slices=14, size=64, prefix="TALL")
    return root


def test_one_patient_on_screen_and_the_kept_correction_comes_back_on_top(make_napari_viewer, tmp_path):
    """Issue 13, bug 2: the previous patient's correction is hidden with it (dims not stretched) and comes back
    on top, selected."""
    viewer = make_napari_viewer()
    _, browser = viewer.window.add_plugin_dock_widget("napari-lgg-seg", "Patient browser")
    browser.set_root(_different_sizes_root(tmp_path))
    browser.ask = lambda title, text: True
    short, tall = browser.current_patient_id, browser.folders[1].name
    assert short.startswith("SHORT")
    layer = _prediction(viewer, short, edited=True)
    viewer.layers.selection.active = layer
    layer.mode = "paint"
    assert browser.next()
    assert patients_open(viewer) == {tall}
    assert all(la.visible is False for la in browser.session.kept[short])
    assert viewer.dims.range[0].stop == 13  # the tall patient's 14 slices, not stretched by the other
    assert browser.previous()
    assert viewer.layers[-1] is layer and layer.visible and viewer.layers.selection.active is layer
    assert patients_open(viewer) == {short}
    assert viewer.dims.range[0].stop == 5  # the short patient's 6 slices
    assert short not in browser.session.kept


def test_a_switch_updates_the_dims_once_not_once_per_layer(setup, monkeypatch):
    """Refilling a patient's layers recomputes napari's dims (and re-slices every layer) once at the end, not once
    per refilled layer (``_common.one_dims_update``); the slider still ends on the new patient's slices."""
    viewer, browser, names = setup
    model = getattr(viewer, "__wrapped__", viewer)
    calls = []
    original = type(model)._on_layers_change

    def counting(self, *args):
        calls.append(1)
        return original(self, *args)

    monkeypatch.setattr(type(model), "_on_layers_change", counting)
    assert browser.next()
    refilled = [la for la in viewer.layers if la.metadata.get("lgg_patient_id") == names[1]]
    assert len(refilled) >= 4  # three channels and the ground truth, refilled in place
    assert len(calls) <= 2, f"dims updated {len(calls)} times"
    assert viewer.dims.range[0].stop == refilled[0].data.shape[0] - 1


def test_the_prefetch_and_export_threads_run_below_the_window(setup, qtbot, tmp_path):
    """Issue 13 (stalls): on 2 cores a worker at the GUI thread's priority takes its CPU; the browser's threads run at
    a lower priority (Linux: nice is per thread) and the GUI thread keeps its own."""
    import os
    import sys
    import threading

    from napari_lgg_seg.layers import WORKER_NICENESS
    from napari_lgg_seg.widgets.browser import _write_in_worker

    if sys.platform != "linux":
        pytest.skip("per-thread priorities are a Linux feature")
    _viewer, browser, _names = setup
    gui_before = os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    def priority() -> int:
        return os.getpriority(os.PRIO_PROCESS, threading.get_native_id())

    assert browser.session._pool.submit(priority).result(timeout=30) >= WORKER_NICENESS

    class Job:
        def write(self):
            return priority()

    seen = []
    _write_in_worker(Job(), seen.append)  # the export worker, as Accept and next starts it
    qtbot.waitUntil(lambda: bool(seen), timeout=30_000)
    assert seen[0] >= WORKER_NICENESS
    assert os.getpriority(os.PRIO_PROCESS, threading.get_native_id()) == gui_before


def test_a_switch_leaves_parked_result_layers_above_without_a_reorder(setup):
    """Issue 13 (stalls): parked result layers (hidden, one voxel) may stay above the next patient's layers; the
    switch then reorders nothing (napari: about 10 ms of frozen window per reorder) and the patient's layers are the
    top of the rest, in the reader's order."""
    from napari_lgg_seg.layers import SPARE_NAMES

    viewer, browser, names = setup
    for kind, name in SPARE_NAMES.items():
        getattr(viewer, f"add_{kind}")(np.zeros((1, 1, 1), np.uint8 if kind == "labels" else np.float32), name=name,
                                       visible=False, metadata={"lgg_role": "spare"})
    reordered = []
    viewer.layers.events.reordered.connect(lambda e: reordered.append(e))
    viewer.layers.events.moved.connect(lambda e: reordered.append(e))
    assert browser.next()
    assert reordered == []
    assert [layer.name for layer in viewer.layers] == [
        f"{names[1]} pre-contrast", f"{names[1]} post-contrast", f"{names[1]} FLAIR", f"{names[1]} ground truth",
        *SPARE_NAMES.values()]
    assert patients_open(viewer) == {names[1]}
