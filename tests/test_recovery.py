"""Crash-recovery files of corrected masks (napari_lgg_seg.recovery)."""

from __future__ import annotations

import shutil

import numpy as np
import pytest

from napari_lgg_seg import recovery


def test_ids_that_sanitise_alike_never_share_a_recovery_file():
    """Issue 12: "TCGA CS 4943" and "TCGA_CS_4943" were the same file, so one patient's unsaved edits replaced
    the other's."""
    a, b = "TCGA CS 4943", "TCGA_CS_4943"
    assert recovery.recovery_path(a) != recovery.recovery_path(b)
    mask_a, mask_b = np.zeros((2, 8, 8), np.uint8), np.ones((2, 8, 8), np.uint8)
    recovery.save_recovery(a, mask_a)
    recovery.save_recovery(b, mask_b)
    np.testing.assert_array_equal(recovery.load_recovery(a).mask, mask_a)
    np.testing.assert_array_equal(recovery.load_recovery(b).mask, mask_b)
    assert recovery.clear_recovery(a) and recovery.has_recovery(b) and not recovery.has_recovery(a)


def test_a_file_holding_another_patient_is_not_offered():
    """The stored patient id is checked on load: a file of another patient (copied, renamed) is kept but never
    offered, restored or deleted for this one."""
    recovery.save_recovery("P_A", np.ones((1, 4, 4), np.uint8))
    intruder = recovery.recovery_path("P_B")
    shutil.copyfile(recovery.recovery_path("P_A"), intruder)
    assert not recovery.has_recovery("P_B")
    with pytest.warns(UserWarning, match="holds patient 'P_A', not 'P_B'"):
        assert recovery.load_recovery("P_B") is None
    assert not recovery.clear_recovery("P_B") and intruder.is_file()


def test_legacy_file_is_read_only_for_its_own_patient():
    """A file from before the hashed names (``<sanitised>.npz``) is still offered to the patient it holds."""
    recovery.save_recovery("TCGA CS 4943", np.ones((1, 4, 4), np.uint8))
    legacy = recovery.recovery_dir() / "TCGA_CS_4943.npz"
    recovery.recovery_path("TCGA CS 4943").rename(legacy)
    assert recovery.load_recovery("TCGA CS 4943").mask.sum() == 16
    assert recovery.load_recovery("TCGA_CS_4943") is None and not recovery.has_recovery("TCGA_CS_4943")
