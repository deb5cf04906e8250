"""npe2 sample data: a synthetic MRI-like phantom patient."""

from __future__ import annotations

from .io import Patient
from .sample import make_phantom

SAMPLE_PATIENT_ID = "PHANTOM_00_20000101"


def sample_patient(n_slices: int = 24) -> Patient:
    """The built-in phantom patient (no source files: export writes its pixels)."""
    images, masks = make_phantom(n_slices=n_slices, seed=0)
    numbers = list(range(1, n_slices + 1))
    return Patient(SAMPLE_PATIENT_ID, images, masks, numbers, [], [None] * n_slices, "")


def make_sample_data():
    """Layers of the phantom patient, as the reader makes them for a real one (and shown the same way)."""
    from ._viewer_hooks import gui_viewer, install_viewer_hooks
    from .display import patient_layer_data

    install_viewer_hooks(gui_viewer())
    return patient_layer_data(sample_patient())
