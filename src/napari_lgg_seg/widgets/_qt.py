"""Small Qt pieces still used by the Train dock (``status_html`` now lives in ``_common``, Qt-free)."""

from __future__ import annotations

from qtpy.QtWidgets import QComboBox

from ._common import ERROR_COLOUR, status_html  # noqa: F401 (re-exported for the browser / train docks)


class RefreshingComboBox(QComboBox):
    """A combo box that asks for fresh items right before its list opens."""

    def __init__(self, refresh, parent=None) -> None:
        super().__init__(parent)
        self._refresh = refresh

    def showPopup(self) -> None:  # noqa: N802 (Qt name)
        self._refresh()
        super().showPopup()
