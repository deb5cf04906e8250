"""The correction workflow of the Patient browser (issue 13): Accept and next, patient states, shortcuts; through
the manifest, on phantom datasets with a tiny random-weight model."""

from __future__ import annotations

import json

import numpy as np
import pytest

from conftest import make_tiny_checkpoint

WAIT_MS = 120_000


@pytest.fixture(autouse=True)
def _isolated(monkeypatch, tmp_path):
    """Settings and recovery files in temporary folders; no shipped default model."""
    import napari_lgg_seg.model as model_mod

    monkeypatch.setenv("LGG_SEG_CONFIG_DIR", str(tmp_path / "config"))
    monkeypatch.setenv("LGG_SEG_RECOVERY_DIR", str(tmp_path / "recovery"))
    monkeypatch.setattr(model_mod, "default_model_path", lambda: None)


def never_ask(title, text):
    raise AssertionError(f"unexpected question: {title}: {text}")


def open_browser(viewer, root):
    _, browser = viewer.window.add_plugin_dock_widget("napari-lgg-seg", "Patient browser")
    browser.ask = never_ask
    if root is not None:
        browser.set_root(root)
    return browser


def press(viewer, key: str) -> None:
    """Press ``key`` on the canvas, as a user would (napari routes it through its keymaps)."""
    from qtpy.QtCore import Qt
    from qtpy.QtTest import QTest

    keys = {"Shift-Enter": (Qt.Key.Key_Return, Qt.KeyboardModifier.ShiftModifier),
            "PageDown": (Qt.Key.Key_PageDown, Qt.KeyboardModifier.NoModifier),
            "PageUp": (Qt.Key.Key_PageUp, Qt.KeyboardModifier.NoModifier),
            "Shift-G": (Qt.Key.Key_G, Qt.KeyboardModifier.ShiftModifier),
            "Shift-S": (Qt.Key.Key_S, Qt.KeyboardModifier.ShiftModifier)}
    canvas = viewer.window._qt_viewer.canvas.native
    canvas.setFocus()
    QTest.keyClick(canvas, *keys[key])


def segment_and_wait(qtbot, viewer, browser, key: bool = False):
    from napari_lgg_seg.widgets.segment import segment_dock

    seg = segment_dock(viewer)
    seg.ask = never_ask
    done = []
    seg.segmentation_done.connect(lambda pid, layer, message: done.append((pid, layer)))
    if key:
        press(viewer, "Shift-S")
    else:
        assert browser.segment() is not None, seg.status_label.value
    qtbot.waitUntil(lambda: bool(done) and not seg.running, timeout=WAIT_MS)
    return done[-1]


@pytest.fixture
def ready(make_napari_viewer, qtbot, phantom_root, tmp_path):
    """A viewer with the browser on the phantom root and the Segment dock on a tiny model."""
    from napari_lgg_seg.widgets.segment import segment_dock

    viewer = make_napari_viewer()
    browser = open_browser(viewer, phantom_root)
    assert segment_dock(viewer).add_checkpoint(make_tiny_checkpoint(tmp_path / "tiny.pt"))
    names = [f.name for f in browser.folders]
    return viewer, browser, names


def test_accept_and_next_exports_moves_on_and_segments(ready, qtbot, tmp_path):
    from napari_lgg_seg.io import load_patient
    from napari_lgg_seg.widgets.segment import segment_dock

    viewer, browser, names = ready
    out = tmp_path / "accepted"
    browser.export_root.value = out
    assert browser.states == dict.fromkeys(names, "not started")
    pid, layer = segment_and_wait(qtbot, viewer, browser, key=True)  # Shift-S
    assert pid == names[0], (type(pid), pid)
    assert layer.name == f"{names[0]} tumour"
    layer = viewer.layers[layer.name]
    assert browser.states[names[0]] == "segmented"
    layer.data_setitem((np.array([2]), np.array([10]), np.array([10])), 1 - int(layer.data[2, 10, 10]))
    qtbot.waitUntil(lambda: browser.states[names[0]] == "corrected")
    painted = np.asarray(layer.data).copy()

    seg = segment_dock(viewer)
    done = []
    seg.segmentation_done.connect(lambda pid, layer, message: done.append(pid))
    press(viewer, "Shift-Enter")  # accept and next: written in a worker, then the next patient opens
    assert browser.exporting and browser.current_patient_id == names[0]
    qtbot.waitUntil(lambda: browser.current_patient_id == names[1], timeout=WAIT_MS)
    assert not browser.exporting
    saved = load_patient(out / names[0])
    np.testing.assert_array_equal(saved.masks > 0, painted > 0)
    assert browser.current_patient_id == names[1] and browser.list.currentRow() == 1
    assert browser.states[names[0]] == "exported"
    qtbot.waitUntil(lambda: done == [names[1]] and not seg.running, timeout=WAIT_MS)  # segmented automatically
    assert f"{names[1]} tumour" in viewer.layers and browser.states[names[1]] == "segmented"
    assert {la.metadata.get("lgg_patient_id") for la in viewer.layers} == {names[1]}

    browser.auto_segment.value = False
    browser.accept_button.native.click()  # the button: exports names[1], opens names[2], does not segment
    qtbot.waitUntil(lambda: browser.current_patient_id == names[2], timeout=WAIT_MS)
    assert (out / names[1]).is_dir()
    assert not seg.running and f"{names[2]} tumour" not in viewer.layers
    assert [browser.states[n] for n in names] == ["exported", "exported", "not started"]


def test_accept_and_next_refuses_clearly(ready, qtbot, tmp_path):
    viewer, browser, names = ready
    assert browser.export_root.value is None
    assert not browser.accept_and_next()  # no tumour layer, no export root
    assert "export root" in browser.status_label.value and browser.current_patient_id == names[0]
    browser.export_root.value = tmp_path / "out"
    assert not browser.accept_and_next()
    assert f"{names[0]} has no tumour layer" in browser.status_label.value
    assert browser.current_patient_id == names[0] and not (tmp_path / "out").exists()
    assert f"{names[0]} ground truth" in viewer.layers  # never exported as a correction

    segment_and_wait(qtbot, viewer, browser)
    (tmp_path / "out" / names[0]).mkdir(parents=True)  # an earlier export of the same patient
    (tmp_path / "out" / names[0] / f"{names[0]}_1_mask.tif").write_bytes(b"mine")
    assert not browser.accept_and_next()
    assert "Nothing was written" in browser.status_label.value and browser.current_patient_id == names[0]
    assert (tmp_path / "out" / names[0] / f"{names[0]}_1_mask.tif").read_bytes() == b"mine"


def test_export_root_and_states_survive_a_restart(make_napari_viewer, qtbot, phantom_root, tmp_path):
    from napari_lgg_seg.io import load_patient, write_patient_folder

    names = sorted(p.name for p in phantom_root.iterdir())
    out = tmp_path / "accepted"
    patient = load_patient(phantom_root / names[0])
    write_patient_folder(out, names[0], patient.masks, images=patient.images)  # accepted in an earlier session

    viewer = make_napari_viewer()
    browser = open_browser(viewer, phantom_root)
    browser.export_root.value = out
    assert json.loads((tmp_path / "config" / "settings.json").read_text())["export_root"] == str(out)
    assert browser.states[names[0]] == "exported" and browser.states[names[1]] == "not started"
    assert "exported" in browser.list.item(0).text()
    viewer.close()

    viewer2 = make_napari_viewer()  # a new session remembers the export root and what was exported
    browser2 = open_browser(viewer2, phantom_root)
    assert browser2.export_root.value == out
    assert browser2.states[names[0]] == "exported"
    browser2.next_todo_button.native.click()
    assert browser2.current_patient_id == names[1]
    write_patient_folder(out, names[1], patient.masks, images=patient.images)
    browser2.refresh_states()
    assert browser2.next_not_exported() and browser2.current_patient_id == names[2]  # skips both exported


def test_shortcuts_are_bound_and_listed(ready):
    viewer, browser, names = ready
    text = browser.shortcuts_label.value
    for key in ("Shift-S", "Shift-Enter", "PageDown", "PageUp", "Shift-G"):
        assert key.replace("-", "\u2011") in text
    press(viewer, "PageDown")
    assert browser.current_patient_id == names[1]
    press(viewer, "PageUp")
    assert browser.current_patient_id == names[0]
    truth = viewer.layers[f"{names[0]} ground truth"]
    before = truth.visible
    press(viewer, "Shift-G")
    assert truth.visible is not before
    press(viewer, "Shift-G")
    assert truth.visible is before


def test_auto_segment_waits_for_the_previous_run_to_finish(ready, qtbot, tmp_path):
    """Accept and next pressed while the Segment dock is still adding the previous result: the next patient is
    segmented once the dock is free, not silently skipped."""
    from qtpy.QtCore import QTimer

    from napari_lgg_seg.widgets.segment import segment_dock

    viewer, browser, names = ready
    browser.export_root.value = tmp_path / "out"
    segment_and_wait(qtbot, viewer, browser)
    seg = segment_dock(viewer)
    done = []
    seg.segmentation_done.connect(lambda pid, layer, message: done.append(pid))
    seg._adding_result = True  # the dock is busy (as right after a run, before its worker has finished)
    QTimer.singleShot(500, lambda: setattr(seg, "_adding_result", False))
    assert browser.accept_and_next()
    qtbot.waitUntil(lambda: browser.current_patient_id == names[1], timeout=WAIT_MS)
    qtbot.waitUntil(lambda: done == [names[1]] and not seg.running, timeout=WAIT_MS)
    assert f"{names[1]} tumour" in viewer.layers


def test_a_deleted_browser_leaves_no_shortcut(make_napari_viewer, qtbot, phantom_root):
    from napari.utils.key_bindings import coerce_keybinding

    from napari_lgg_seg.widgets.browser import PatientBrowser

    viewer = make_napari_viewer()
    browser = PatientBrowser(viewer, root=str(phantom_root))
    assert coerce_keybinding("PageDown") in viewer.keymap
    with qtbot.waitSignal(browser.native.destroyed):
        browser.native.deleteLater()
    assert coerce_keybinding("PageDown") not in viewer.keymap
    press(viewer, "PageDown")  # nothing happens, nothing raises


def viewer_with_a_tiny_model(make_napari_viewer, tmp_path):
    """A viewer whose Segment dock has a tiny model; ``done`` collects the ids of segmented patients."""
    from napari_lgg_seg.widgets.segment import segment_dock

    viewer = make_napari_viewer()
    seg = segment_dock(viewer)
    assert seg.add_checkpoint(make_tiny_checkpoint(tmp_path / "tiny.pt"))
    done = []
    seg.segmentation_done.connect(lambda pid, layer, message: done.append(pid))
    return viewer, seg, done


def test_opening_a_root_segments_its_first_patient(make_napari_viewer, qtbot, phantom_root, tmp_path):
    """With a model at hand and "Segment automatically" ticked (the default), opening a root segments the patient
    it opens with: the first patient costs no Segment click (issue 13: <= 1 action per patient)."""
    viewer, seg, done = viewer_with_a_tiny_model(make_napari_viewer, tmp_path)
    browser = open_browser(viewer, phantom_root)
    first = browser.current_patient_id
    qtbot.waitUntil(lambda: done == [first] and not seg.running, timeout=WAIT_MS)
    assert f"{first} tumour" in viewer.layers and browser.states[first] == "segmented"

    browser.auto_segment.value = False  # unticked (remembered): opening a root segments nothing
    other = open_browser(make_napari_viewer(), phantom_root)
    assert not other.auto_segment.value
    qtbot.wait(300)
    assert done == [first]


def test_the_next_button_leaves_a_segmented_patient_in_two_turns(ready, qtbot):
    """The dock's Next (button, key, list) parks the results in one event-loop turn and opens the next patient in
    the next one (issue 13: shorter freezes); no layer is removed; the API's next() stays synchronous."""
    from napari_lgg_seg.layers import ROLE_SPARE

    viewer, browser, names = ready
    pid, labels = segment_and_wait(qtbot, viewer, browser)
    qtbot.waitUntil(lambda: all(f.done() for f in browser.session.prefetched.values()), timeout=WAIT_MS)  # neighbours read
    removed = []
    viewer.layers.events.removed.connect(lambda event: removed.append(event.value.name))
    browser.next_button.native.click()
    assert browser.current_patient_id == pid and labels.metadata.get("lgg_role") == ROLE_SPARE  # parked at once
    qtbot.waitUntil(lambda: browser.current_patient_id == names[1], timeout=5_000)
    assert f"{names[1]} FLAIR" in viewer.layers and removed == []
    assert browser.previous() and browser.current_patient_id == names[0]  # synchronous


def test_a_segment_click_before_the_automatic_one_segments_once(make_napari_viewer, qtbot, phantom_root,
                                                                   tmp_path):
    """The user presses Segment as the root opens, before the automatic segmentation starts: the automatic one
    then waits for that run and, finding the patient segmented, does not segment it a second time."""
    viewer, seg, done = viewer_with_a_tiny_model(make_napari_viewer, tmp_path)
    browser = open_browser(viewer, phantom_root)
    assert browser.segment() is not None  # before the event loop turns: the automatic run is still queued
    first = browser.current_patient_id
    qtbot.waitUntil(lambda: done == [first] and not seg.running, timeout=WAIT_MS)
    qtbot.wait(600)  # the automatic run re-checks every 0.2 s while the dock is busy
    assert done == [first] and not seg.running
    assert [la.name for la in viewer.layers].count(f"{first} tumour") == 1


def test_the_next_patients_result_reuses_the_previous_result_layers(ready, qtbot):
    """Leaving a segmented patient parks its two result layers (hidden, one voxel, no patient); the next patient's
    result refills them: no layer is removed or added (0.1-0.25 s of frozen window each in napari)."""
    from napari_lgg_seg.layers import ROLE_SPARE

    viewer, browser, names = ready
    pid, labels = segment_and_wait(qtbot, viewer, browser)
    probability = viewer.layers[f"{pid} tumour probability"]
    assert labels.mode == "paint"
    removed = []
    viewer.layers.events.removed.connect(lambda event: removed.append(event.value.name))

    assert browser.next()
    spares = [la for la in viewer.layers if la.metadata.get("lgg_role") == ROLE_SPARE]
    assert {la.unique_id for la in spares} == {labels.unique_id, probability.unique_id} and removed == []
    assert all(not la.visible and la.data.size == 1 for la in spares) and labels.mode == "pan_zoom"
    assert getattr(viewer.layers.selection.active, "unique_id", None) != labels.unique_id
    n_slices = viewer.layers[f"{names[1]} FLAIR"].data.shape[0]
    assert viewer.dims.range[0].stop - viewer.dims.range[0].start <= n_slices  # spares do not stretch the slider
    assert tuple(viewer.dims.axis_labels) == ("slice", "y", "x")
    assert browser.states[names[0]] == "segmented"  # its state is remembered, not its layers

    added = []
    viewer.layers.events.inserted.connect(lambda event: added.append(event.value.name))
    pid2, labels2 = segment_and_wait(qtbot, viewer, browser)
    assert pid2 == names[1] and labels2.unique_id == labels.unique_id and added == [] and removed == []
    assert labels.name == f"{names[1]} tumour" and labels.visible and labels.mode == "paint"
    assert labels.data.shape == viewer.layers[f"{names[1]} FLAIR"].data.shape
    assert viewer.layers[-1].unique_id == labels.unique_id == viewer.layers.selection.active.unique_id
    assert viewer.layers[f"{names[1]} tumour probability"].unique_id == probability.unique_id
    assert not any(la.metadata.get("lgg_role") == ROLE_SPARE for la in viewer.layers)
    assert browser.states[names[1]] == "segmented"
    z = labels.data.shape[0] // 2
    labels.paint((z, 5, 5), 1, refresh=True)  # the brush works on the refilled layer, and counts as a correction
    assert labels.data[z, 5, 5] == 1
    qtbot.waitUntil(lambda: browser.states[names[1]] == "corrected", timeout=5_000)


# ------------------------------------------------------------- the Qt-free session (napari ViewerModel, no window)


class Recorder:
    """A ``DatasetSession`` on a ViewerModel whose later turns are queued (``run_later`` runs them) and whose
    signals are recorded."""

    def __init__(self, root=None, export_root=None, answer=True) -> None:
        from napari.components import ViewerModel

        from napari_lgg_seg.workflow import DatasetSession

        self.viewer = ViewerModel()
        self.queued, self.questions, self.messages, self.rows, self.waits, self.moved = [], [], [], [], [], []
        self.session = DatasetSession(self.viewer, export_root=export_root, ask=self.ask,
                                      later=lambda ms, fn: self.queued.append(fn), waiting=self.waiting)
        self.answer = answer
        self.session.status.connect(lambda text, error: self.messages.append((text, error)))
        self.session.current_changed.connect(self.rows.append)
        self.session.moved_on.connect(self.moved.append)
        if root is not None:
            assert self.session.open_root(root) == 3
            assert self.session.show_patient(0)

    def ask(self, title, text) -> bool:
        self.questions.append(text)
        return self.answer

    def waiting(self):
        import contextlib

        self.waits.append(1)
        return contextlib.nullcontext()

    def run_later(self) -> None:
        while self.queued:
            self.queued.pop(0)()

    def open_patients(self) -> set:
        return {la.metadata.get("lgg_patient_id") for la in self.viewer.layers
                if la.metadata.get("lgg_role") != "spare"}

    def segment(self, pid: str, edited: bool = False):
        """A result of ``pid``, as the Segment dock adds it (tumour labels with the network's mask, probability)."""
        shape = self.viewer.layers[f"{pid} FLAIR"].data.shape
        ai = np.zeros(shape, np.uint8)
        ai[1, 5:9, 5:9] = 1
        layer = self.viewer.add_labels(ai.copy(), name=f"{pid} tumour", metadata={
            "lgg_patient_id": pid, "lgg_role": "prediction", "lgg_ai_mask": ai.copy(), "lgg_result_id": "r1"})
        self.viewer.add_image(ai.astype(np.float32), name=f"{pid} tumour probability", visible=False,
                              metadata={"lgg_patient_id": pid, "lgg_role": "probability", "lgg_result_id": "r1"})
        if edited:
            layer.data_setitem((np.array([2]), np.array([3]), np.array([3])), 1)
            self.run_later()  # the state follows the paint in a later turn
        return layer


def wait_for_prefetch(session) -> None:
    for future in list(session.prefetched.values()):
        future.result(timeout=60)


def test_session_lists_a_root_and_steps_through_it(phantom_root):
    rec = Recorder()
    session = rec.session
    listed = []
    session.listed.connect(lambda: listed.append(list(session.folders)))
    assert session.open_root(phantom_root) == 3 and listed == [session.folders]
    names = [folder.name for folder in session.folders]
    assert names == sorted(p.name for p in phantom_root.iterdir())
    assert session.states == dict.fromkeys(names, "not started") and rec.messages[-1] == ("3 patients in "
                                                                                         f"{phantom_root}.", False)
    assert session.current_patient_id is None and not session.previous() and not session.show_patient(3)

    assert session.show_patient(0) and rec.open_patients() == {names[0]} and rec.rows == [0]
    assert rec.messages[-1][0].startswith(f"Patient 1 of 3: {names[0]}, 12 slices")
    assert rec.viewer.dims.current_step[0] == 6
    assert set(session.prefetched) == {session.folders[1]}
    wait_for_prefetch(session)
    waits = len(rec.waits)
    assert session.next() and rec.open_patients() == {names[1]} and session.current_index == 1
    assert len(rec.waits) == waits  # the prefetched copy, ready: no wait
    assert set(session.prefetched) == {session.folders[0], session.folders[2]}
    assert session.next() and not session.next() and session.current_patient_id == names[2]
    assert session.switch_to(0, soon=True) and rec.rows == [0, 1, 2, 0]  # nothing to park: switched at once
    assert rec.open_patients() == {names[0]} and rec.questions == []


def test_session_root_without_patients_and_a_patient_folder_as_root(phantom_root, tmp_path):
    session = Recorder().session
    messages = []
    session.status.connect(lambda text, error: messages.append((text, error)))
    assert session.open_root(tmp_path / "empty") == 0 and session.root is None
    assert messages[-1][1] and "No patient folders" in messages[-1][0]
    folder = sorted(phantom_root.iterdir())[1]
    assert session.open_root(folder) == 1 and session.folders == [folder]


def test_session_keeps_unexported_corrections_and_asks_first(phantom_root):
    from napari_lgg_seg import recovery

    rec = Recorder(phantom_root, answer=False)
    session, names = rec.session, [f.name for f in rec.session.folders]
    layer = rec.segment(names[0], edited=True)
    assert session.states[names[0]] == "corrected"
    assert not session.next() and len(rec.questions) == 1 and f"'{names[0]} tumour'" in rec.questions[0]
    assert rec.rows[-1] == 0 and session.current_patient_id == names[0] and layer in rec.viewer.layers

    rec.answer = True
    assert session.next() and rec.open_patients() == {names[1]}
    assert session.kept == {names[0]: [layer]} and not layer.visible and layer not in rec.viewer.layers
    assert session.states[names[0]] == "corrected" and recovery.has_recovery(names[0])  # autosaved
    assert session.previous() and rec.viewer.layers[-1] is layer and layer.visible and session.kept == {}
    assert rec.viewer.layers.selection.active is layer


def test_session_parks_results_then_switches_in_a_later_turn(phantom_root):
    rec = Recorder(phantom_root)
    session, names = rec.session, [f.name for f in rec.session.folders]
    labels = rec.segment(names[0])
    assert session.states[names[0]] == "segmented" and names[0] in session.segmented
    wait_for_prefetch(session)
    assert session.switch_to(1, soon=True)
    assert session.current_patient_id == names[0] and labels.metadata == {"lgg_role": "spare"}  # parked now
    rec.run_later()
    assert session.current_patient_id == names[1] and rec.open_patients() == {names[1]}
    assert session.states[names[0]] == "segmented"  # remembered without its layers

    rec.segment(names[1])
    wait_for_prefetch(session)
    assert session.switch_to(2, soon=True) and session.show_patient(0)  # another patient opened meanwhile
    rec.run_later()
    assert session.current_patient_id == names[0]  # the parked switch to patient 3 was dropped


def test_session_reads_again_a_folder_changed_since_its_prefetch(phantom_root):
    rec = Recorder(phantom_root)
    session, names = rec.session, [f.name for f in rec.session.folders]
    wait_for_prefetch(session)
    (phantom_root / names[1] / f"{names[1]}_4.tif").write_bytes(b"II*\x00broken")
    waits = len(rec.waits)
    assert not session.next()
    assert len(rec.waits) == waits + 1  # read now, with the wait cursor
    text, error = rec.messages[-1]
    assert error and f"Cannot open {names[1]}" in text and f"{names[1]}_4.tif" in text
    assert session.current_patient_id == names[0] and rec.rows[-1] == 0 and rec.open_patients() == {names[0]}


def test_session_accept_and_next(phantom_root, tmp_path):
    from napari_lgg_seg.io import load_patient

    rec = Recorder(phantom_root)
    session, names = rec.session, [f.name for f in rec.session.folders]
    assert not session.accept_and_next() and "export root" in rec.messages[-1][0] and rec.messages[-1][1]
    session.export_root = out = tmp_path / "accepted"
    assert not session.accept_and_next() and rec.messages[-1] == (
        f"{names[0]} has no tumour layer to accept: segment it first (Shift-S).", True)
    layer = rec.segment(names[0], edited=True)
    painted = np.asarray(layer.data).copy()

    written = []
    session.write_export = lambda job, done: written.append((job, done))  # as a worker would: later
    assert session.accept_and_next() and session.exporting and rec.messages[-1] == (f"Exporting {names[0]}…", False)
    assert not session.accept_and_next() and "still being written" in rec.messages[-1][0]
    job, done = written[0]
    done(job.write())
    assert not session.exporting and session.states[names[0]] == "exported"
    assert session.current_patient_id == names[0] and layer.metadata == {"lgg_role": "spare"}  # parked
    rec.run_later()
    assert session.current_patient_id == names[1] and rec.moved == [names[1]]
    np.testing.assert_array_equal(load_patient(out / names[0]).masks > 0, painted > 0)

    session.write_export = lambda job, done: done(FileExistsError("it exists."))
    rec.segment(names[1])
    assert session.accept_and_next() and not session.exporting
    assert rec.messages[-1] == ("Not accepted: it exists. Nothing was written (the Export dock's 'Overwrite' "
                                "replaces an export).", True)
    session.write_export = lambda job, done: done(OSError("disk full"))
    assert session.accept_and_next() and rec.messages[-1] == (f"Export of {names[1]} failed: disk full", True)
    assert session.current_patient_id == names[1] and session.states[names[1]] == "segmented"


def test_session_accepts_the_last_patient_and_says_all_are_exported(phantom_root, tmp_path):
    from napari_lgg_seg.io import load_patient, write_patient_folder

    out = tmp_path / "accepted"
    rec = Recorder(phantom_root, export_root=out)
    session, names = rec.session, [f.name for f in rec.session.folders]
    for name in names[1:]:
        patient = load_patient(phantom_root / name)
        write_patient_folder(out, name, patient.masks, images=patient.images)
    session.refresh_states()
    assert [session.states[n] for n in names] == ["not started", "exported", "exported"]
    assert session.next_not_exported_index() is None and not session.next_not_exported()
    assert rec.messages[-1] == (f"All 3 patients are exported to {out}.", False)

    layer = rec.segment(names[0])
    assert session.accept_and_next()  # written at once (the default writer)
    assert session.current_patient_id == names[0] and layer in rec.viewer.layers and rec.queued == []
    assert session.states[names[0]] == "exported" and rec.moved == []
    assert session.accept_and_next() is False  # already exported: nothing left to open
    assert rec.messages[-1] == (f"All 3 patients are exported to {out}.", False)


def test_session_next_not_exported_wraps_around(phantom_root, tmp_path):
    from napari_lgg_seg.io import load_patient, write_patient_folder

    out = tmp_path / "accepted"
    rec = Recorder(phantom_root, export_root=out)
    session, names = rec.session, [f.name for f in rec.session.folders]
    assert session.show_patient(2) and session.next_not_exported_index() == 0
    patient = load_patient(phantom_root / names[0])
    write_patient_folder(out, names[0], patient.masks, images=patient.images)
    assert session.next_not_exported_index() == 1
    assert session.next_not_exported() and session.current_patient_id == names[1]


def test_session_adopts_the_readers_patient_and_toggles_its_ground_truth(phantom_root):
    from napari.layers import Layer

    rec = Recorder()
    session = rec.session
    session.open_root(phantom_root)
    layers = session.first_patient_layers()
    names = [folder.name for folder in session.folders]
    assert session.current_patient_id == names[0] and rec.rows == [0]
    for data, kwargs, kind in layers:
        rec.viewer.add_layer(Layer.create(data, kwargs, kind))
    assert not session.adopt("nobody") and session.adopt(names[0]) and rec.rows == [0, 0]
    assert set(session.prefetched) == {session.folders[1]}
    truth = rec.viewer.layers[f"{names[0]} ground truth"]
    visible = truth.visible
    session.toggle_ground_truth()
    assert truth.visible is not visible
    assert session.next() and rec.open_patients() == {names[1]}


def test_a_closed_session_stops_reading_ahead_and_following_the_viewer(phantom_root):
    rec = Recorder(phantom_root)
    session, names = rec.session, [f.name for f in rec.session.folders]
    states = []
    session.state_changed.connect(lambda index, state: states.append(state))
    session.close()
    assert session.prefetched == {}
    session.prefetch_around(1)  # the pool is shut down: nothing is read, nothing raises
    assert session.prefetched == {}
    rec.segment(names[0])
    assert names[0] not in session.segmented and states == []
