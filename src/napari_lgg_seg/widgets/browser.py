"""The "Patient browser" dock: step through the patients of a dataset root, one patient open at a time, and
correct them in one sitting: each patient's state, Accept and next (export, next patient, segment), shortcuts."""

from __future__ import annotations

import os
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from magicgui.widgets import CheckBox, Container, FileEdit, Label, PushButton
from qtpy.QtCore import QTimer
from qtpy.QtWidgets import QApplication, QListWidget

from .._reader import read_folder, read_folder_signed, signature_of
from ..io import LGGFormatError, Patient, find_patient_folders, is_patient_folder, load_patient
from ..layers import (
    ROLE_GROUND_TRUTH,
    ROLE_PREDICTION,
    ROLE_PROBABILITY,
    ai_mask_of,
    has_unexported_edits,
    is_result_layer,
    leave_patient,
    park_result_layers,
    patient_of_layer,
    prediction_layers,
    safe_remove_layers,
    show_patient_layers,
    tumour_layer,
)
from ..workflow import EXPORTED, load_settings, patient_state, save_settings
from ._common import (
    fit_layer_list_to_patients,
    keep_gc_pauses_short,
    notify,
    qt_ask,
    run_below_the_window,
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

    def __init__(self, napari_viewer, root: str = "", load_first: bool = True) -> None:
        self.viewer = napari_viewer
        self.root: Path | None = None
        self.folders: list[Path] = []
        self.current_index = -1
        self.current_patient_id: str | None = None
        self._setting_root = False

        self.root_edit = FileEdit(mode="d", nullable=True, label="Dataset root",
                                  tooltip="A folder of patient folders: type it and press Enter, or choose it")
        self.root_edit.line_edit.native.setPlaceholderText("a folder of patient folders")
        self.prev_button = PushButton(text="◀ Previous")
        self.next_button = PushButton(text="Next ▶")
        nav = Container(widgets=[self.prev_button, self.next_button], layout="horizontal", labels=False)
        nav.margins = (0, 0, 0, 0)
        # one row per patient with its state: magicgui's list widget (Select) is a multi-choice control
        self.list = QListWidget()
        self.list.setMinimumHeight(120)  # at least ~7 patients visible
        self.status_label = wrapped_label(Label(), rich=True)
        self._kept: dict[str, list] = {}  # corrections not yet exported of patients not on screen (bug 2)
        self._segmented: set[str] = set()
        self._export_job = None  # the Accept-and-next export being written in a worker
        self.states: dict[str, str] = {}
        settings = load_settings()
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
        buttons = Container(widgets=[self.accept_button, self.next_todo_button], layout="horizontal", labels=False)
        buttons.margins = (0, 0, 0, 0)
        self.workflow = Container(widgets=[self.export_root, self.auto_segment, buttons, self.shortcuts_label])
        self.workflow.margins = (0, 0, 0, 0)
        root_form = Container(widgets=[self.root_edit])
        root_form.margins = (0, 0, 0, 0)
        super().__init__(widgets=[root_form, nav, self.workflow, self.status_label], labels=False)
        self.native.layout().insertWidget(2, self.list, 1)
        self.ask = qt_ask(self.native)
        # the neighbours of the open patient are read (and their contrast computed) in a thread, ahead of the click
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lgg-browser-prefetch",
                                        initializer=run_below_the_window)
        self._prefetched: dict[Path, Future] = {}  # folder -> (its signature, _read(folder)) read in the pool
        pool, prefetched = self._pool, self._prefetched
        self.native.destroyed.connect(lambda *_: _shutdown(pool, prefetched))

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
        napari_viewer.layers.events.inserted.connect(self._on_layer_inserted)
        napari_viewer.layers.events.renamed.connect(self._on_layer_renamed)  # a spare result layer reused
        napari_viewer.layers.events.removed.connect(self._refresh_current_state)
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
        from .._reader import patient_folders

        root = Path(os.path.expanduser(str(root)))
        folders = find_patient_folders(root) if is_patient_folder(root) else patient_folders(root)
        self._setting_root = True
        try:
            self.root_edit.value = root
        finally:
            self._setting_root = False
        if not folders:
            self._say(f"No patient folders (with <PATIENT>_<k>.tif slices) found in {root}.", error=True)
            return 0
        self.root = root
        self.folders = folders
        self.current_index = -1
        self.list.blockSignals(True)
        self.list.clear()
        self.list.addItems([f.name for f in folders])
        self.list.blockSignals(False)
        self._kept.clear()
        self.refresh_states()
        self._say(f"{len(folders)} patients in {root}.")
        if load and self.show_patient(0):
            self._segment_on_open()
        self._update_nav()
        return len(folders)

    def adopt_root(self, root: str | os.PathLike, patient_id: str) -> None:
        """List ``root``'s patients and mark ``patient_id`` as the open one; its layers are already in the viewer
        (the reader added them), so nothing is loaded."""
        self.set_root(root, load=False)
        for index, folder in enumerate(self.folders):
            if folder.name == patient_id:
                self.current_index = index
                self.current_patient_id = patient_id
                self.list.blockSignals(True)
                self.list.setCurrentRow(index)
                self.list.blockSignals(False)
                self._say(f"Patient {index + 1} of {len(self.folders)}: {patient_id}")
                self._refresh_current_state()
                self._prefetch_around(index)
                self._segment_on_open()
                break
        self._update_nav()

    def _segment_on_open(self) -> None:
        """With automatic segmentation ticked, segment the patient a root opens with (unless it has a tumour layer),
        when a model is at hand (the Segment dock's or the shipped one): no Segment click for the first patient."""
        from ..model import default_model_path
        from ._common import current_model_path

        pid = self.current_patient_id
        if not self.auto_segment.value or pid is None or tumour_layer(self.viewer, pid) is not None:
            return
        if current_model_path() is None and default_model_path() is None:
            return
        QTimer.singleShot(0, lambda: self._segment_when_idle(pid, tries=100))

    def first_patient_layers(self) -> list[tuple]:
        """Layer-data tuples of the first patient, marked as the open one (the dataset-root reader returns them)."""
        from .._reader import patient_layer_data

        if not self.folders:
            return []
        patient = load_patient(self.folders[0])
        self._set_current(0, patient)
        return patient_layer_data(patient)

    # ------------------------------------------------------------------------------ switching

    def next(self, soon: bool = False) -> bool:
        """Open the next patient (``soon``: as the dock's button and key do, see ``switch_to``)."""
        return self.current_index + 1 < len(self.folders) and self.switch_to(self.current_index + 1, soon)

    def previous(self, soon: bool = False) -> bool:
        """Open the previous patient (``soon``: as the dock's button and key do, see ``switch_to``)."""
        return self.current_index > 0 and self.switch_to(self.current_index - 1, soon)

    def _on_row_changed(self, row: int) -> None:
        if 0 <= row < len(self.folders) and row != self.current_index:
            self.switch_to(row, soon=True)

    def switch_to(self, index: int, soon: bool = False) -> bool:
        """``show_patient(index)``; with ``soon`` (the dock's buttons, keys and list), when the patient on screen
        has results to park and nothing unexported to ask about, and the target is already read: the results are
        parked in this event-loop turn and the patient opens in the next (two short freezes instead of one long)."""
        previous = self.current_patient_id
        if soon and previous is not None and index != self.current_index and 0 <= index < len(self.folders):
            layers = [la for la in self.viewer.layers if patient_of_layer(la) == previous]
            roles = [(la.metadata or {}).get("lgg_role") for la in layers]
            future = self._prefetched.get(self.folders[index])
            ready = future is not None and future.done() and not future.cancelled() and future.exception() is None
            if ready and ROLE_PROBABILITY in roles and not any(has_unexported_edits(la) for la in layers):
                self._park_then(previous, lambda: self.show_patient(index))
                return True
        return self.show_patient(index)

    def show_patient(self, index: int) -> bool:
        """Swap the open patient for patient ``index``; False when the user cancels or it cannot be read."""
        if not 0 <= index < len(self.folders):
            return False
        folder = self.folders[index]
        previous, previous_index = self.current_patient_id, self.current_index
        if previous is not None:
            unsaved = [la for la in prediction_layers(self.viewer, previous) if has_unexported_edits(la)]
            if unsaved:
                names = ", ".join(f"'{la.name}'" for la in unsaved)
                if not self.ask("Unexported corrections",
                                f"{names} has corrections that were not exported. Open {folder.name} anyway?\n\n"
                                f"The corrected layer is kept (hidden, autosaved) and comes back when you return "
                                f"to {previous}, so you can still export it."):
                    self._restore_row()
                    return False
        try:
            patient, extra_layers, layer_data = self._loaded(folder)
        except LGGFormatError as err:
            self._say(f"Cannot open {folder.name}: {err}", error=True)
            notify(f"Cannot open {folder.name}: {err}", "warning")
            self._restore_row()
            return False
        old_shape = self._remove_patient_layers(previous, keep_reader_layers=True) if previous is not None else None
        kept = self._kept.pop(patient.patient_id, [])
        if kept:  # its kept correction comes back instead of the output folder's copy
            extra_layers = [t for t in extra_layers if (t[1].get("metadata") or {}).get("lgg_role") != ROLE_PREDICTION]
        show_patient_layers(self.viewer, [*layer_data, *extra_layers], previous, kept)
        self._set_current(index, patient)
        self._refresh_current_state()
        if 0 <= previous_index < len(self.folders):
            self._show_state(previous_index)
        if old_shape != patient.images.shape[:3]:
            self.viewer.reset_view()
        if patient.images.shape[0] > 1:
            self.viewer.dims.set_current_step(0, patient.images.shape[0] // 2)
        self._prefetch_around(index)
        return True

    # ------------------------------------------------------------------------------ prefetch

    def _loaded(self, folder: Path) -> tuple[Patient, list[tuple], list[tuple]]:
        """``(patient, extra layer tuples, patient layer tuples)`` of ``folder``: the prefetched copy when the folder's
        files have not changed since it was read, else read now (with a wait cursor). Raises LGGFormatError."""
        future = self._prefetched.pop(folder, None)
        if future is not None and not future.cancelled():
            waiting = not future.done()
            if waiting:
                QApplication.setOverrideCursor(_wait_cursor())
            try:
                signature, loaded = future.result()
            except Exception:  # noqa: BLE001 - read again below: the message is then about the files as they are now
                signature = None
            finally:
                if waiting:
                    QApplication.restoreOverrideCursor()
            if signature is not None and signature == signature_of(folder):
                return loaded
        QApplication.setOverrideCursor(_wait_cursor())
        try:
            return read_folder(folder)
        finally:
            QApplication.restoreOverrideCursor()

    def _prefetch_around(self, index: int) -> None:
        """Read the next and the previous patient in the background (forgetting any other prefetched one)."""
        wanted = [self.folders[i] for i in (index + 1, index - 1) if 0 <= i < len(self.folders)]
        for folder in list(self._prefetched):
            if folder not in wanted:
                self._prefetched.pop(folder).cancel()
        for folder in wanted:
            if folder not in self._prefetched:
                try:
                    self._prefetched[folder] = self._pool.submit(read_folder_signed, folder)
                except RuntimeError:  # the pool was shut down (the dock is closing)
                    return

    def _remove_patient_layers(self, patient_id: str, keep_reader_layers: bool = False):
        """``layers.leave_patient``; the corrections it keeps are autosaved and come back with the patient (bug
        2). Returns the patient's (Z, H, W)."""
        from .. import recovery

        shape, kept = leave_patient(self.viewer, patient_id, keep_reader_layers)
        for layer in kept:
            try:
                recovery.save_recovery(patient_id, np.asarray(layer.data), ai_mask=ai_mask_of(layer),
                                       info={"layer": layer.name})
            except OSError as err:
                notify(f"Could not autosave {layer.name}: {err}", "warning")
        if kept:
            self._kept[patient_id] = kept
        return shape

    def _set_current(self, index: int, patient: Patient) -> None:
        self.current_index = index
        self.current_patient_id = patient.patient_id
        self.list.blockSignals(True)
        self.list.setCurrentRow(index)
        self.list.blockSignals(False)
        note = f" ({len(patient.warnings)} warnings: {patient.warnings[0]}…)" if patient.warnings else ""
        self._say(f"Patient {index + 1} of {len(self.folders)}: {patient.patient_id}, "
                  f"{patient.num_slices} slices{note}")
        self._update_nav()

    def _restore_row(self) -> None:
        self.list.blockSignals(True)
        self.list.setCurrentRow(self.current_index)
        self.list.blockSignals(False)

    def _update_nav(self) -> None:
        self.prev_button.enabled = self.current_index > 0
        self.next_button.enabled = 0 <= self.current_index + 1 < len(self.folders)
        self.next_todo_button.enabled = bool(self.folders)

    # ------------------------------------------------------------------------------- workflow

    def _bind_keys(self) -> None:
        """Register the dock's shortcuts on this viewer's keymap (``viewer.bind_key``)."""
        import weakref

        ref = weakref.ref(self)
        for key, _what, run in SHORTCUTS:
            def action(viewer, run=run):
                browser = ref()
                if browser is not None:
                    run(browser)

            self.viewer.bind_key(key, action, overwrite=True)
        from napari.utils.key_bindings import coerce_keybinding

        keymap = self.viewer.keymap
        mine = {coerce_keybinding(key): keymap.get(coerce_keybinding(key)) for key, _what, _method in SHORTCUTS}

        def unbind(*_args) -> None:  # a deleted dock leaves no shortcut behind (unless another browser rebound it)
            for key, action in mine.items():
                if keymap.get(key) is action:
                    keymap.pop(key, None)

        self.native.destroyed.connect(unbind)

    def _on_export_root(self, value=None) -> None:
        root = self.export_root.value
        save_settings(export_root=os.fspath(root) if root else "")
        self.refresh_states()

    def _on_layer_inserted(self, event) -> None:
        layer = event.value
        pid = patient_of_layer(layer)
        if (layer.metadata or {}).get("lgg_role") == ROLE_PREDICTION and pid:
            self._segmented.add(pid)
        if hasattr(layer.events, "paint"):  # any Labels: its role may be set after insertion
            layer.events.paint.connect(self._refresh_soon)  # emitted before data_setitem writes the data
        self._refresh_current_state()

    def _on_layer_renamed(self, event) -> None:
        try:
            layer = self.viewer.layers[event.index]
        except (IndexError, TypeError):
            return
        pid = patient_of_layer(layer)
        if (layer.metadata or {}).get("lgg_role") == ROLE_PREDICTION and pid:
            self._segmented.add(pid)
            self._refresh_current_state()

    def _state(self, patient_id: str) -> str:
        return patient_state(self.viewer, patient_id, self.export_root.value, self._kept.get(patient_id, ()),
                             self._segmented)

    def _show_state(self, index: int) -> None:
        name = self.folders[index].name
        self.states[name] = state = self._state(name)
        item = self.list.item(index)
        if item is not None:
            item.setText(f"{name}  ·  {state}")

    def refresh_states(self) -> None:
        """Show every patient's state in the list (exported: read from the export root)."""
        self.states = {}
        for index in range(len(self.folders)):
            self._show_state(index)

    def _refresh_soon(self, *_args) -> None:
        QTimer.singleShot(0, self._refresh_current_state)

    def _refresh_current_state(self, *_args) -> None:
        if 0 <= self.current_index < len(self.folders):
            self._show_state(self.current_index)

    def next_not_exported(self) -> bool:
        """Open the next patient (after the current one, wrapping around) not exported yet."""
        index = self.next_not_exported_index()
        if index is None:
            n = len(self.folders)
            self._say(f"All {n} patients are exported to {self.export_root.value}." if n else "Open a dataset root.")
            return False
        return self.show_patient(index)

    def next_not_exported_index(self) -> int | None:
        """Index of the next patient (after the current one, wrapping around) not exported yet; None if none."""
        n = len(self.folders)
        for step in range(1, n + 1):
            index = (self.current_index + step) % n
            if index != self.current_index and self._state(self.folders[index].name) != EXPORTED:
                return index
        return None

    def accept_and_next(self) -> bool:
        """Export the current patient's tumour layer to the export root, open the next patient not exported and
        (when ticked) segment it. Refuses, saying why, without a patient, tumour layer or export root.

        The files are written in a worker thread (``exporting`` is True meanwhile; the window keeps painting): the
        next patient opens once the export has succeeded; a failed export is reported as before and the patient
        stays open. Returns False when refused at once, True when the export started (or the patient was already
        exported and the next one opened)."""
        from napari.qt.threading import create_worker

        from ..export import prepare_export

        pid = self.current_patient_id
        root = self.export_root.value
        layer = tumour_layer(self.viewer, pid)
        if pid is None:
            return self._refuse("Open a dataset root first.")
        if self.exporting:
            return self._refuse(f"The export of {self._export_job.patient_id} is still being written.")
        if root is None or not os.fspath(root):
            return self._refuse("Choose an export root first (the folder the accepted patients are written to).")
        if layer is None:
            return self._refuse(f"{pid} has no tumour layer to accept: segment it first (Shift-S).")
        already = (layer.metadata or {}).get("lgg_exported_digest") and not has_unexported_edits(layer)
        if already:
            self._refresh_current_state()
            return self._move_on()
        try:
            job = prepare_export(self.viewer, root, patient_id=pid, layer=layer)
        except Exception as err:  # noqa: BLE001 - the refusals of export_patient, worded as before
            return self._export_failed(pid, err)
        self._export_job = job
        worker = create_worker(_write_export, job, _start_thread=False)
        worker.returned.connect(lambda result: self._on_exported(job, result))
        worker.finished.connect(lambda: self._export_done(job))
        self._say(f"Exporting {pid}…")
        worker.start()
        return True

    @property
    def exporting(self) -> bool:
        """True while Accept and next writes an export in its worker thread."""
        return self._export_job is not None

    def _export_done(self, job) -> None:
        if self._export_job is job:
            self._export_job = None

    def _on_exported(self, job, result) -> None:
        """Back on the GUI thread after the write: mark the layer exported and move on (if the user has not moved
        to another patient meanwhile)."""
        self._export_done(job)
        try:
            if isinstance(result, BaseException):
                self._export_failed(job.patient_id, result)
                return
            job.finish()
            notify(f"Accepted {job.patient_id}: exported to {result}.")
            self._refresh_current_state()
            if job.patient_id == self.current_patient_id:
                if self.next_not_exported_index() is None:
                    self._move_on()  # says that all are exported; the accepted result stays on screen
                    return
                self._park_then(job.patient_id, self._move_on)  # exported: nothing to lose
            else:  # the user opened another patient while it was written: only its state changes
                for index, folder in enumerate(self.folders):
                    if folder.name == job.patient_id:
                        self._show_state(index)
        except RuntimeError:  # the dock's Qt objects are gone
            pass

    def _export_failed(self, pid: str, err: BaseException) -> bool:
        if isinstance(err, FileExistsError):
            return self._refuse(f"Not accepted: {err} Nothing was written (the Export dock's 'Overwrite' "
                                "replaces an export).")
        if isinstance(err, (LGGFormatError, OSError, ValueError)):
            return self._refuse(f"Export of {pid} failed: {err}")
        raise err

    def _park_then(self, patient_id: str, then) -> None:
        """Leave ``patient_id`` in two event-loop turns instead of one long one: its results (probability, tumour
        layers without unexported edits) are parked for the next patient's result now, ``then()`` runs in the next
        turn unless the user has moved to another patient meanwhile."""
        results = [la for la in self.viewer.layers if patient_of_layer(la) == patient_id and is_result_layer(la)]
        safe_remove_layers(self.viewer, park_result_layers(self.viewer, results))
        QTimer.singleShot(1, lambda: then() if patient_id == self.current_patient_id else None)

    def _move_on(self) -> bool:
        """After an accepted export: open the next patient not exported and (when ticked) segment it."""
        if not self.next_not_exported():
            return False
        if self.auto_segment.value:  # in its own event-loop turn: the switch above is one already
            pid = self.current_patient_id
            QTimer.singleShot(1, lambda: self._segment_when_idle(pid, tries=100))
        return True

    def _segment_when_idle(self, patient_id: str | None, tries: int) -> None:
        """Segment ``patient_id`` once the Segment dock has finished its previous run (checked every 0.2 s)."""
        from .segment import segment_dock

        if (patient_id is None or patient_id != self.current_patient_id
                or tumour_layer(self.viewer, patient_id) is not None):
            return  # moved on, or segmented meanwhile (e.g. by a Segment click while the dock was busy)
        if segment_dock(self.viewer).running and tries > 0:
            QTimer.singleShot(200, lambda: self._segment_when_idle(patient_id, tries - 1))
            return
        self.segment()

    def segment(self):
        """Segment the current patient with the Segment dock (opened if needed); returns the worker or None."""
        from .segment import segment_current, segment_dock

        if self.current_patient_id is None:
            self._refuse("Open a dataset root first.")
            return None
        if segment_dock(self.viewer).running:
            self._refuse("The Segment dock is still busy with a run; segment again when it has finished.")
            return None
        worker = segment_current(self.viewer, self.current_patient_id)
        if worker is None:
            self._say(f"Not segmented: {segment_dock(self.viewer).status_label.value}", error=True)
        return worker

    def toggle_ground_truth(self) -> None:
        """Show or hide the current patient's ground truth."""
        for layer in self.viewer.layers:
            meta = layer.metadata or {}
            if meta.get("lgg_role") == ROLE_GROUND_TRUTH and patient_of_layer(layer) == self.current_patient_id:
                layer.visible = not layer.visible

    def _refuse(self, text: str) -> bool:
        self._say(text, error=True)
        notify(text, "warning")
        return False

    def _say(self, text: str, error: bool = False) -> None:
        self.status_label.value = status_html(text, error)


def _write_export(job):
    """Worker: write the export; the refusals come back as values (napari would show an error raised in a worker as a
    traceback notification)."""
    run_below_the_window()
    try:
        return job.write()
    except (LGGFormatError, OSError, ValueError) as err:  # FileExistsError is an OSError
        return err


def _shutdown(pool: ThreadPoolExecutor, prefetched: dict) -> None:
    for future in prefetched.values():
        future.cancel()
    prefetched.clear()
    pool.shutdown(wait=False, cancel_futures=True)


def _wait_cursor():
    from qtpy.QtCore import Qt
    from qtpy.QtGui import QCursor

    return QCursor(Qt.CursorShape.WaitCursor)
