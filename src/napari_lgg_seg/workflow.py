"""Qt-free core of the Patient browser: remembered settings, each patient's state and the dataset session."""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Callable
from concurrent.futures import Future, ThreadPoolExecutor
from pathlib import Path

import numpy as np
from napari.utils.notifications import show_info, show_warning
from psygnal import Signal

from . import recovery
from ._reader import patient_folders, patient_layer_data, read_folder, read_folder_signed, signature_of
from .export import prepare_export
from .io import LGGFormatError, Patient, find_patient_folders, is_patient_folder, load_patient
from .layers import (
    EXPORTED_KEY,
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

NOT_STARTED, SEGMENTED, CORRECTED, EXPORTED = "not started", "segmented", "corrected", "exported"


def config_dir() -> Path:
    """The plugin's settings folder: ``$LGG_SEG_CONFIG_DIR`` or ``~/.config/napari-lgg-seg``."""
    env = os.environ.get("LGG_SEG_CONFIG_DIR")
    if env:
        return Path(env)
    base = os.environ.get("XDG_CONFIG_HOME") or os.path.join(os.path.expanduser("~"), ".config")
    return Path(base) / "napari-lgg-seg"


def load_settings() -> dict:
    """The remembered settings (empty when none were saved or the file is unreadable)."""
    try:
        data = json.loads((config_dir() / "settings.json").read_text())
    except (OSError, ValueError):
        return {}
    return data if isinstance(data, dict) else {}


def save_settings(**values) -> None:
    """Merge ``values`` into the settings file (written atomically; failures are ignored: it is a convenience)."""
    path = config_dir() / "settings.json"
    data = {**load_settings(), **values}
    try:
        path.parent.mkdir(parents=True, exist_ok=True)
        tmp = path.with_suffix(".json.tmp")
        tmp.write_text(json.dumps(data, indent=2))
        os.replace(tmp, path)
    except OSError:
        pass


def is_exported(export_root: str | os.PathLike | None, patient_id: str) -> bool:
    """True when ``EXPORT_ROOT/<PATIENT>/`` holds exported masks (so the state survives restarts)."""
    if not export_root:
        return False
    folder = Path(export_root) / patient_id
    return folder.is_dir() and any(folder.glob(f"{patient_id}_*_mask.tif"))


def patient_state(viewer, patient_id: str, export_root=None, kept=(), segmented=()) -> str:
    """not started / segmented / corrected / exported, from the open (or ``kept``) tumour layers and the export
    root. A patient whose layer holds corrections not yet exported is "corrected" even if an older export exists."""
    layers = [*prediction_layers(viewer, patient_id), *kept]
    if any(has_unexported_edits(layer) for layer in layers):
        return CORRECTED
    if is_exported(export_root, patient_id):
        return EXPORTED
    if layers or patient_id in segmented:
        return SEGMENTED
    return NOT_STARTED


class DatasetSession:
    """The patients of a dataset root, one of them open in a napari viewer: switching patients (the neighbours read
    ahead in a thread), the unexported corrections kept for their patient, each patient's state, Accept and next.

    The dock supplies what needs a GUI: ``ask(title, text) -> bool`` (leave unexported corrections?), ``later(ms,
    fn)`` (run ``fn`` in a later event-loop turn; default: at once), ``waiting()`` (a context shown while a read
    blocks), ``write_export(job, done)`` (write an ``ExportJob`` and call ``done`` with the folder written or the
    error; default: here and now) and ``initializer`` (run in the prefetch thread first).
    """

    status = Signal(str, bool)  # a message for the status line; True: an error
    listed = Signal()  # a new root's patients are in ``folders``
    state_changed = Signal(int, str)  # a patient's index and its state
    current_changed = Signal(int)  # the open patient's index (again after a cancelled switch)
    moved_on = Signal(str)  # Accept and next has opened this patient

    def __init__(self, viewer, *, export_root=None, ask: Callable[[str, str], bool] | None = None,
                 later: Callable[[int, Callable], None] | None = None, waiting: Callable = contextlib.nullcontext,
                 write_export: Callable | None = None, initializer: Callable | None = None) -> None:
        self.viewer = viewer
        self.export_root = export_root
        self.ask = ask or (lambda title, text: False)
        self.later = later or (lambda ms, fn: fn())
        self.waiting = waiting
        self.write_export = write_export or (lambda job, done: done(write_export_job(job)))
        self.root: Path | None = None
        self.folders: list[Path] = []
        self.current_index = -1
        self.current_patient_id: str | None = None
        self.kept: dict[str, list] = {}  # unexported corrections of patients off screen (issue 13, bug 2)
        self.segmented: set[str] = set()
        self.states: dict[str, str] = {}
        self.export_job = None  # the Accept-and-next export being written
        self.closed = False
        self.prefetched: dict[Path, Future] = {}  # folder -> read_folder_signed(folder), read in the pool
        self._pool = ThreadPoolExecutor(max_workers=1, thread_name_prefix="lgg-browser-prefetch",
                                        initializer=initializer)
        self._connections = [(viewer.layers.events.inserted, self._on_layer_inserted),
                             (viewer.layers.events.renamed, self._on_layer_renamed),  # a parked layer reused
                             (viewer.layers.events.removed, self.refresh_current_state)]
        for emitter, callback in self._connections:
            emitter.connect(callback)

    def close(self) -> None:
        """Stop reading ahead and stop following the viewer (the dock is gone)."""
        self.closed = True
        for emitter, callback in self._connections:
            emitter.disconnect(callback)
        for signal in (self.status, self.listed, self.state_changed, self.current_changed, self.moved_on):
            signal.disconnect()
        for future in self.prefetched.values():
            future.cancel()
        self.prefetched.clear()
        self._pool.shutdown(wait=False, cancel_futures=True)

    # ------------------------------------------------------------------------------------ root

    def open_root(self, root: str | os.PathLike) -> int:
        """List the patients under ``root`` (a dataset root, or a patient folder); returns how many."""
        root = Path(os.path.expanduser(str(root)))
        folders = find_patient_folders(root) if is_patient_folder(root) else patient_folders(root)
        if not folders:
            self.say(f"No patient folders (with <PATIENT>_<k>.tif slices) found in {root}.", error=True)
            return 0
        self.root, self.folders, self.current_index = root, folders, -1
        self.kept.clear()
        self.listed.emit()
        self.refresh_states()
        self.say(f"{len(folders)} patients in {root}.")
        return len(folders)

    def index_of(self, patient_id: str | None) -> int | None:
        """The index of ``patient_id``'s folder, or None."""
        return next((i for i, folder in enumerate(self.folders) if folder.name == patient_id), None)

    def adopt(self, patient_id: str) -> bool:
        """Mark ``patient_id`` as the open patient, its layers being in the viewer already (the reader added them)."""
        index = self.index_of(patient_id)
        if index is None:
            return False
        self.current_index, self.current_patient_id = index, patient_id
        self.current_changed.emit(index)
        self.say(f"Patient {index + 1} of {len(self.folders)}: {patient_id}")
        self.refresh_current_state()
        self.prefetch_around(index)
        return True

    def first_patient_layers(self) -> list[tuple]:
        """Layer-data tuples of the first patient, marked as the open one (the dataset-root reader returns them)."""
        if not self.folders:
            return []
        patient = load_patient(self.folders[0])
        self._set_current(0, patient)
        return patient_layer_data(patient)

    # ------------------------------------------------------------------------------- switching

    def next(self, soon: bool = False) -> bool:
        """Open the next patient (``soon``: see ``switch_to``)."""
        return self.current_index + 1 < len(self.folders) and self.switch_to(self.current_index + 1, soon)

    def previous(self, soon: bool = False) -> bool:
        """Open the previous patient (``soon``: see ``switch_to``)."""
        return self.current_index > 0 and self.switch_to(self.current_index - 1, soon)

    def switch_to(self, index: int, soon: bool = False) -> bool:
        """``show_patient(index)``; with ``soon`` (the dock's buttons, keys and list), when the open patient has results
        to park and nothing unexported to ask about, and the target is already read: the results are parked now and
        the patient opens in a later event-loop turn (two short freezes instead of one long)."""
        previous = self.current_patient_id
        if soon and previous is not None and index != self.current_index and 0 <= index < len(self.folders):
            layers = [la for la in self.viewer.layers if patient_of_layer(la) == previous]
            roles = [(la.metadata or {}).get("lgg_role") for la in layers]
            future = self.prefetched.get(self.folders[index])
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
        if previous is not None and not self._may_leave(previous, folder.name):
            self.current_changed.emit(self.current_index)
            return False
        try:
            patient, extra_layers, layer_data = self._read(folder)
        except LGGFormatError as err:
            self.refuse(f"Cannot open {folder.name}: {err}")
            self.current_changed.emit(self.current_index)
            return False
        old_shape = self._leave(previous) if previous is not None else None
        kept = self.kept.pop(patient.patient_id, [])
        if kept:  # its kept correction comes back instead of the output folder's copy
            extra_layers = [t for t in extra_layers if (t[1].get("metadata") or {}).get("lgg_role") != ROLE_PREDICTION]
        show_patient_layers(self.viewer, [*layer_data, *extra_layers], previous, kept)
        self._set_current(index, patient)
        self.refresh_current_state()
        if 0 <= previous_index < len(self.folders):
            self._update_state(previous_index)
        if old_shape != patient.images.shape[:3]:
            self.viewer.reset_view()
        if patient.images.shape[0] > 1:
            self.viewer.dims.set_current_step(0, patient.images.shape[0] // 2)
        self.prefetch_around(index)
        return True

    def _may_leave(self, patient_id: str, target: str) -> bool:
        """True unless ``patient_id`` has unexported corrections and the user does not want to leave them."""
        unsaved = [la for la in prediction_layers(self.viewer, patient_id) if has_unexported_edits(la)]
        if not unsaved:
            return True
        names = ", ".join(f"'{la.name}'" for la in unsaved)
        return self.ask("Unexported corrections",
                        f"{names} has corrections that were not exported. Open {target} anyway?\n\n"
                        f"The corrected layer is kept (hidden, autosaved) and comes back when you return to "
                        f"{patient_id}, so you can still export it.")

    def _read(self, folder: Path) -> tuple[Patient, list[tuple], list[tuple]]:
        """``read_folder(folder)``: the prefetched copy when the folder's files have not changed since, else read now
        (inside ``waiting()``, as is a wait for the prefetch). Raises LGGFormatError."""
        future = self.prefetched.pop(folder, None)
        if future is not None and not future.cancelled():
            with self.waiting() if not future.done() else contextlib.nullcontext():
                try:
                    signature, loaded = future.result()
                except Exception:  # noqa: BLE001 - read again below: the message is then about the files as they are
                    signature = None
            if signature is not None and signature == signature_of(folder):
                return loaded
        with self.waiting():
            return read_folder(folder)

    def prefetch_around(self, index: int) -> None:
        """Read the next and the previous patient in the background (forgetting any other prefetched one)."""
        wanted = [self.folders[i] for i in (index + 1, index - 1) if 0 <= i < len(self.folders)]
        for folder in list(self.prefetched):
            if folder not in wanted:
                self.prefetched.pop(folder).cancel()
        for folder in wanted:
            if folder not in self.prefetched:
                try:
                    self.prefetched[folder] = self._pool.submit(read_folder_signed, folder)
                except RuntimeError:  # the pool was shut down
                    return

    def _leave(self, patient_id: str) -> tuple | None:
        """``layers.leave_patient`` (reader layers stay, to be refilled); the corrections it keeps are autosaved and
        come back with the patient. Returns the patient's (Z, H, W)."""
        shape, kept = leave_patient(self.viewer, patient_id, keep_reader_layers=True)
        for layer in kept:
            try:
                recovery.save_recovery(patient_id, np.asarray(layer.data), ai_mask=ai_mask_of(layer),
                                       info={"layer": layer.name})
            except OSError as err:
                show_warning(f"Could not autosave {layer.name}: {err}")
        if kept:
            self.kept[patient_id] = kept
        return shape

    def _set_current(self, index: int, patient: Patient) -> None:
        self.current_index, self.current_patient_id = index, patient.patient_id
        self.current_changed.emit(index)
        note = f" ({len(patient.warnings)} warnings: {patient.warnings[0]}…)" if patient.warnings else ""
        self.say(f"Patient {index + 1} of {len(self.folders)}: {patient.patient_id}, {patient.num_slices} slices{note}")

    def _park_then(self, patient_id: str, then: Callable) -> None:
        """Leave ``patient_id`` in two event-loop turns: its results (probability, tumour layers without unexported
        edits) are parked for the next patient's result now, ``then()`` runs in a later turn unless another patient
        was opened meanwhile."""
        results = [la for la in self.viewer.layers if patient_of_layer(la) == patient_id and is_result_layer(la)]
        safe_remove_layers(self.viewer, park_result_layers(self.viewer, results))
        self.later(1, lambda: then() if patient_id == self.current_patient_id else None)

    def toggle_ground_truth(self) -> None:
        """Show or hide the open patient's ground truth."""
        for layer in self.viewer.layers:
            if (layer.metadata or {}).get("lgg_role") == ROLE_GROUND_TRUTH \
                    and patient_of_layer(layer) == self.current_patient_id:
                layer.visible = not layer.visible

    # ---------------------------------------------------------------------------------- states

    def state(self, patient_id: str) -> str:
        """``patient_state`` of ``patient_id`` in this session."""
        return patient_state(self.viewer, patient_id, self.export_root, self.kept.get(patient_id, ()),
                             self.segmented)

    def _update_state(self, index: int) -> None:
        name = self.folders[index].name
        self.states[name] = state = self.state(name)
        self.state_changed.emit(index, state)

    def refresh_states(self) -> None:
        """Recompute every patient's state (exported: read from the export root)."""
        self.states = {}
        for index in range(len(self.folders)):
            self._update_state(index)

    def refresh_current_state(self, *_args) -> None:
        """Recompute the open patient's state."""
        if 0 <= self.current_index < len(self.folders):
            self._update_state(self.current_index)

    def _on_layer_inserted(self, event) -> None:
        layer = event.value
        self._note_result(layer)
        if hasattr(layer.events, "paint"):  # any Labels (its role may be set later); emitted before the data changes
            layer.events.paint.connect(self._refresh_later)
        self.refresh_current_state()

    def _on_layer_renamed(self, event) -> None:
        try:
            layer = self.viewer.layers[event.index]
        except (IndexError, TypeError):
            return
        if self._note_result(layer):
            self.refresh_current_state()

    def _note_result(self, layer) -> bool:
        """Remember that a tumour layer's patient was segmented; True for a tumour layer."""
        pid = patient_of_layer(layer)
        if (layer.metadata or {}).get("lgg_role") == ROLE_PREDICTION and pid:
            self.segmented.add(pid)
            return True
        return False

    def _refresh_later(self, *_args) -> None:
        self.later(0, self.refresh_current_state)

    # ------------------------------------------------------------------------- accept and next

    def next_not_exported_index(self) -> int | None:
        """Index of the next patient (after the open one, wrapping around) not exported yet; None if none."""
        n = len(self.folders)
        for step in range(1, n + 1):
            index = (self.current_index + step) % n
            if index != self.current_index and self.state(self.folders[index].name) != EXPORTED:
                return index
        return None

    def next_not_exported(self) -> bool:
        """Open the next patient (after the open one, wrapping around) not exported yet."""
        index = self.next_not_exported_index()
        if index is None:
            n = len(self.folders)
            self.say(f"All {n} patients are exported to {self.export_root}." if n else "Open a dataset root.")
            return False
        return self.show_patient(index)

    @property
    def exporting(self) -> bool:
        """True while Accept and next's export is being written."""
        return self.export_job is not None

    def accept_and_next(self) -> bool:
        """Export the open patient's tumour layer to the export root (with ``write_export``), then open the next
        patient not exported. Refuses, saying why, without a patient, tumour layer or export root. Returns False when
        refused at once, True when the export started (or the patient was already exported and the next one opened).
        A failed export is reported and the patient stays open."""
        pid, root = self.current_patient_id, self.export_root
        if pid is None:
            return self.refuse("Open a dataset root first.")
        if self.exporting:
            return self.refuse(f"The export of {self.export_job.patient_id} is still being written.")
        if root is None or not os.fspath(root):
            return self.refuse("Choose an export root first (the folder the accepted patients are written to).")
        layer = tumour_layer(self.viewer, pid)
        if layer is None:
            return self.refuse(f"{pid} has no tumour layer to accept: segment it first (Shift-S).")
        if (layer.metadata or {}).get(EXPORTED_KEY) and not has_unexported_edits(layer):
            self.refresh_current_state()
            return self._move_on()
        try:
            job = prepare_export(self.viewer, root, patient_id=pid, layer=layer)
        except (LGGFormatError, OSError, ValueError) as err:
            return self._export_failed(pid, err)
        self.export_job = job
        self.say(f"Exporting {pid}…")
        self.write_export(job, lambda result: self._on_exported(job, result))
        return True

    def _on_exported(self, job, result) -> None:
        """After the write: ``result`` is the folder written or the error. The layer is marked exported and, if its
        patient is still open, the next patient opens."""
        self.export_job = None
        if isinstance(result, BaseException):
            self._export_failed(job.patient_id, result)
            return
        job.finish()
        show_info(f"Accepted {job.patient_id}: exported to {result}.")
        if self.closed:
            return
        self.refresh_current_state()
        if job.patient_id != self.current_patient_id:  # another patient was opened meanwhile: only its state changes
            index = self.index_of(job.patient_id)
            if index is not None:
                self._update_state(index)
        elif self.next_not_exported_index() is None:
            self._move_on()  # says that all are exported; the accepted result stays on screen
        else:
            self._park_then(job.patient_id, self._move_on)  # exported: nothing to lose

    def _export_failed(self, pid: str, err: BaseException) -> bool:
        if isinstance(err, FileExistsError):
            return self.refuse(f"Not accepted: {err} Nothing was written (the Export dock's 'Overwrite' replaces an "
                               "export).")
        return self.refuse(f"Export of {pid} failed: {err}")

    def _move_on(self) -> bool:
        if not self.next_not_exported():
            return False
        self.moved_on.emit(self.current_patient_id)
        return True

    # -------------------------------------------------------------------------------- messages

    def say(self, text: str, error: bool = False) -> None:
        """Show ``text`` on the status line."""
        self.status.emit(text, error)

    def refuse(self, text: str) -> bool:
        """Say why something was not done (status line and a warning notification); returns False."""
        self.say(text, error=True)
        show_warning(text)
        return False


def write_export_job(job):
    """``job.write()``, its refusals (``LGGFormatError``, ``OSError``, ``ValueError``) returned as values."""
    try:
        return job.write()
    except (LGGFormatError, OSError, ValueError) as err:  # FileExistsError is an OSError
        return err
