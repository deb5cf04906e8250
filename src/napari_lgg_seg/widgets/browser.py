"""The "Patient browser" dock: step through the patients of a dataset root, one patient open at a time, and
correct them in one sitting: each patient's state, Accept and next (export, next patient, segment), shortcuts.

A form on top of ``workflow.DatasetSession``, which does the work on the viewer."""

from __future__ import annotations

import contextlib
import os
import weakref
from pathlib import Path

from magicgui.widgets import CheckBox, Container, FileEdit, Label, PushButton
from qtpy.QtCore import Qt
from qtpy.QtGui import QCursor
from qtpy.QtWidgets import QApplication, QListWidget

from ..layers import run_below_the_window, tumour_layer
from ..workflow import DatasetSession, load_settings, save_settings, write_export_job
from ._common import (
    background,
    delegate,
    fit_layer_list_to_patients,
    keep_gc_pauses_short,
    later,
    qt_ask,
    row,
    status_html,
    wrapped_label,
)

#: (key, what it does, browser method): registered on the viewer's own keymap; napari binds none of these keys.
SHORTCUTS = (
    ("Shift-S", "segment the patient", lambda browser: browser.segment()),
    ("Shift-Enter", "accept and next", lambda browser: browser.accept_and_next()),
    ("PageDown", "next patient", lambda browser: browser.next(soon=True)),  # as the dock's buttons
    ("PageUp", "previous patient", lambda browser: browser.previous(soon=True)),
    ("Shift-G", "show / hide ground truth", lambda browser: browser.toggle_ground_truth()),
)


class PatientBrowser(Container):
    """List the patients under a dataset root; Previous / Next / a click swaps the open patient.

    ``ask(title, text) -> bool`` asks before leaving unexported corrections; replace it in tests.
    """

    ask = delegate("ask", writable=True)

    def __init__(self, napari_viewer, root: str = "", load_first: bool = True) -> None:
        self.viewer = napari_viewer
        self._setting_root = False
        settings = load_settings()
        self.root_edit = FileEdit(mode="d", nullable=True, label="Dataset root",
                                  tooltip="A folder of patient folders: type it and press Enter, or choose it")
        self.root_edit.line_edit.native.setPlaceholderText("a folder of patient folders")
        self.prev_button = PushButton(text="◀ Previous")
        self.next_button = PushButton(text="Next ▶")
        self.list = QListWidget()  # one row per patient with its state (magicgui's Select is a multi-choice list)
        self.list.setMinimumHeight(120)  # at least ~7 patients visible
        self.export_root = FileEdit(mode="d", nullable=True, label="Export root",
                                    value=settings.get("export_root") or None,
                                    tooltip="Accept and next exports to EXPORT_ROOT/<PATIENT>/ (remembered)")
        self.auto_segment = CheckBox(text="Segment automatically (on open, after Accept)",
                                     value=bool(settings.get("auto_segment", True)))
        self.accept_button = PushButton(text="Accept and next", tooltip="Export this patient's tumour layer, open "
                                        "the next patient not exported (and segment it)  [Shift-Enter]")
        self.next_todo_button = PushButton(text="Next not exported")
        self.shortcuts_label = Label(value="Keys: " + " · ".join(  # non-breaking hyphens: "Shift-Enter" stays whole
            f"{key.replace('-', chr(0x2011))} {what}" for key, what, _ in SHORTCUTS))
        self.shortcuts_label.native.setWordWrap(True)
        self.status_label = wrapped_label(Label(), rich=True)
        rows = [Container(widgets=[self.root_edit]),
                row(self.prev_button, self.next_button),
                Container(widgets=[self.export_root, self.auto_segment]),
                row(self.accept_button, self.next_todo_button)]
        for form in rows[::2]:
            form.margins = (0, 0, 0, 0)
        super().__init__(widgets=[*rows, self.shortcuts_label, self.status_label], labels=False)
        self.native.layout().insertWidget(2, self.list, 1)

        self.session = session = DatasetSession(
            napari_viewer, export_root=self.export_root.value, ask=qt_ask(self.native),
            later=later, waiting=_wait_cursor, write_export=_write_in_worker,
            initializer=run_below_the_window)  # the neighbours are read below the window's priority
        session.status.connect(self._show_status)
        session.listed.connect(self._list_patients)
        session.state_changed.connect(self._show_state)
        session.current_changed.connect(self._show_current)
        session.moved_on.connect(lambda pid: self._segment_soon(pid, need_model=False))
        self.native.destroyed.connect(lambda *_: session.close())

        self.root_edit.line_edit.native.editingFinished.connect(self._on_root_edited)  # Enter, or leaving the field
        self.root_edit.changed.connect(self._on_root_chosen)
        self.list.currentRowChanged.connect(self._on_row_changed)
        self.prev_button.clicked.connect(lambda: self.previous(soon=True))
        self.next_button.clicked.connect(lambda: self.next(soon=True))
        self.export_root.changed.connect(self._on_export_root)
        self.auto_segment.changed.connect(lambda value: save_settings(auto_segment=bool(value)))
        self.accept_button.clicked.connect(self.accept_and_next)
        self.next_todo_button.clicked.connect(self.next_not_exported)
        self._bind_keys()
        self._update_nav()
        from .._viewer_hooks import install_viewer_hooks

        install_viewer_hooks(napari_viewer)  # the patients' layers look as the reader's (outline, one channel)
        fit_layer_list_to_patients(napari_viewer)
        keep_gc_pauses_short(napari_viewer, self.native)
        if root:
            self.set_root(root, load=load_first)

    # ---------------------------------------------------------------------------------- root

    def _on_root_chosen(self, _value=None) -> None:
        """The root field changed: chosen in its dialog (typing is taken on Enter or when leaving the field)."""
        if not self.root_edit.line_edit.native.hasFocus():
            self._on_root_edited()

    def _on_root_edited(self) -> None:
        value = self.root_edit.value
        if self._setting_root or value is None or not os.fspath(value):
            return
        if self.root is None or Path(value).expanduser().resolve() != self.root.resolve():
            self.set_root(value)

    def set_root(self, root: str | os.PathLike, load: bool = True) -> int:
        """List the patients under ``root`` (and open the first one when ``load``); returns how many."""
        self._setting_root = True
        try:
            self.root_edit.value = Path(os.path.expanduser(str(root)))
        finally:
            self._setting_root = False
        count = self.session.open_root(root)
        if count and load and self.session.show_patient(0):
            self._segment_soon(self.current_patient_id)
        self._update_nav()
        return count

    def adopt_root(self, root: str | os.PathLike, patient_id: str) -> None:
        """List ``root``'s patients and mark ``patient_id`` as the open one; its layers are already in the viewer
        (the reader added them), so nothing is loaded."""
        if self.set_root(root, load=False) and self.session.adopt(patient_id):
            self._segment_soon(patient_id)

    def _on_export_root(self, _value=None) -> None:
        root = self.export_root.value
        save_settings(export_root=os.fspath(root) if root else "")
        self.session.export_root = root
        self.session.refresh_states()

    # ------------------------------------------------------------------------------ the list

    def _show_status(self, text: str, error: bool) -> None:
        self.status_label.value = status_html(text, error)

    def _list_patients(self) -> None:
        self.list.blockSignals(True)
        self.list.clear()
        self.list.addItems([folder.name for folder in self.folders])
        self.list.blockSignals(False)

    def _show_state(self, index: int, state: str) -> None:
        item = self.list.item(index)
        if item is not None:
            item.setText(f"{self.folders[index].name}  ·  {state}")

    def _show_current(self, index: int) -> None:
        self.list.blockSignals(True)
        self.list.setCurrentRow(index)
        self.list.blockSignals(False)
        self._update_nav()

    def _on_row_changed(self, row: int) -> None:
        if 0 <= row < len(self.folders) and row != self.current_index:
            self.switch_to(row, soon=True)

    def _update_nav(self) -> None:
        self.prev_button.enabled = self.current_index > 0
        self.next_button.enabled = 0 <= self.current_index + 1 < len(self.folders)
        self.next_todo_button.enabled = bool(self.folders)

    def _bind_keys(self) -> None:
        """Register the dock's shortcuts on this viewer's keymap; a deleted dock leaves none behind (unless another
        browser rebound the key)."""
        from napari.utils.key_bindings import coerce_keybinding

        ref = weakref.ref(self)
        keymap = self.viewer.keymap
        mine = {}
        for key, _what, run in SHORTCUTS:
            def action(viewer, run=run):
                if (browser := ref()) is not None:
                    run(browser)

            self.viewer.bind_key(key, action, overwrite=True)
            mine[coerce_keybinding(key)] = keymap.get(coerce_keybinding(key))

        def unbind(*_args) -> None:
            for key, action in mine.items():
                if keymap.get(key) is action:
                    keymap.pop(key, None)

        self.native.destroyed.connect(unbind)

    # ------------------------------------------------------------------------------- segment

    def _segment_soon(self, patient_id: str | None, need_model: bool = True) -> None:
        """With "Segment automatically" ticked, segment ``patient_id`` in a later event-loop turn, once the Segment
        dock is free, unless it has a tumour layer; ``need_model``: only when a model is at hand (the Segment
        dock's or the shipped one; opening a root), else the dock says why it did not segment."""
        from ..model import default_model_path
        from ..segmentation import current_model_path

        if not self.auto_segment.value or patient_id is None or tumour_layer(self.viewer, patient_id) is not None:
            return
        if need_model and current_model_path() is None and default_model_path() is None:
            return
        later(1, lambda: self._segment_when_idle(patient_id, tries=100))

    def _segment_when_idle(self, patient_id: str, tries: int) -> None:
        """Segment ``patient_id`` once the Segment dock has finished its previous run (checked every 0.2 s)."""
        from .segment import segment_dock

        if patient_id != self.current_patient_id or tumour_layer(self.viewer, patient_id) is not None:
            return  # moved on, or segmented meanwhile (e.g. by a Segment click while the dock was busy)
        if segment_dock(self.viewer).running and tries > 0:
            later(200, lambda: self._segment_when_idle(patient_id, tries - 1))
            return
        self.segment()

    def segment(self):
        """Segment the open patient with the Segment dock (opened if needed); returns the worker or None."""
        from .segment import segment_current, segment_dock

        if self.current_patient_id is None:
            self.session.refuse("Open a dataset root first.")
            return None
        if segment_dock(self.viewer).running:
            self.session.refuse("The Segment dock is still busy (a run, or a model loading); segment again when it has finished.")
            return None
        worker = segment_current(self.viewer, self.current_patient_id)
        if worker is None:
            self.session.say(f"Not segmented: {segment_dock(self.viewer).status_label.value}", error=True)
        return worker


for _name in ("root", "folders", "current_index", "current_patient_id", "states", "exporting", "next", "previous",
              "switch_to", "show_patient", "first_patient_layers", "next_not_exported", "next_not_exported_index",
              "accept_and_next", "refresh_states", "toggle_ground_truth"):
    setattr(PatientBrowser, _name, delegate(_name))  # ``DatasetSession``'s, on the dock
del _name


def _write_in_worker(job, done) -> None:
    """Write an export in a worker thread (the window keeps painting); ``done(result)`` back on the GUI thread."""
    worker = background(write_export_job)(job)
    worker.returned.connect(done)
    worker.errored.connect(done)  # an unexpected error: reported as a failed export (napari shows its traceback)
    worker.start()


@contextlib.contextmanager
def _wait_cursor():
    QApplication.setOverrideCursor(QCursor(Qt.CursorShape.WaitCursor))
    try:
        yield
    finally:
        QApplication.restoreOverrideCursor()
