"""npe2 reader: an LGG patient folder (or one of its slices) -> FLAIR/pre/post images + ground truth.

A dataset root (a folder of patient folders) opens the first patient and the patient browser dock.
"""

from __future__ import annotations

import os
from pathlib import Path

from .io import (
    CHANNEL_NAMES,
    FLAIR_CHANNEL,
    Patient,
    is_dataset_root,
    is_patient_folder,
    load_patient,
    parse_slice_name,
)


def _single_path(path):
    if isinstance(path, (list, tuple)):
        if len(path) != 1:
            paths = {Path(p).parent if Path(p).is_file() else Path(p) for p in path}
            return str(paths.pop()) if len(paths) == 1 else None
        path = path[0]
    return str(path)


def napari_get_reader(path):
    """Return a reader for LGG patient folders, their slice files and dataset roots; else ``None``."""
    path = _single_path(path)
    if path is None:
        return None
    p = Path(path)
    if p.is_file():
        parsed = parse_slice_name(p.name)
        if parsed is None or not is_patient_folder(p.parent):
            return None
        return read_patient
    if is_patient_folder(p):
        return read_patient
    if is_dataset_root(p):
        return read_dataset_root
    return None


def patient_layer_data(patient: Patient) -> list[tuple]:
    """napari layer-data tuples for a patient: pre/post hidden, FLAIR visible on top, ground truth."""
    meta = patient.metadata()
    layers = []
    order = [c for c in range(3) if c != FLAIR_CHANNEL] + [FLAIR_CHANNEL]
    for c in order:
        layers.append((
            patient.images[..., c],
            {"name": f"{patient.patient_id} {CHANNEL_NAMES[c]}", "colormap": "gray", "blending": "additive",
             "visible": c == FLAIR_CHANNEL, "contrast_limits": (0, 255),
             "metadata": {**meta, "lgg_channel": CHANNEL_NAMES[c], "lgg_rgb_source": c == FLAIR_CHANNEL}},
            "image",
        ))
    if patient.masks is not None:
        layers.append((
            patient.masks,
            {"name": f"{patient.patient_id} ground truth", "opacity": 0.4, "visible": False,
             "metadata": {**meta, "lgg_role": "ground_truth"}},
            "labels",
        ))
    return layers


def read_patient(path) -> list[tuple]:
    """Read one patient (folder or slice path) into layer-data tuples."""
    path = _single_path(path)
    patient = load_patient(path)
    return patient_layer_data(patient)


def read_dataset_root(path) -> list[tuple]:
    """Open the patient browser for a dataset root and return the first patient's layers."""
    path = _single_path(path)
    root = Path(path)
    try:
        import napari

        viewer = napari.current_viewer()
    except Exception:
        viewer = None
    if viewer is not None:
        from .widgets.browser import PatientBrowser

        browser = PatientBrowser(viewer, root=os.fspath(root), load_first=False)
        viewer.window.add_dock_widget(browser, name="LGG patient browser", area="right")
        return browser.first_patient_layers()
    from .io import find_patient_folders

    return patient_layer_data(load_patient(find_patient_folders(root)[0]))
