"""Small Qt pieces shared by the widgets."""

from __future__ import annotations

from qtpy.QtWidgets import QComboBox


class RefreshingComboBox(QComboBox):
    """A combo box that asks for fresh items right before its list opens."""

    def __init__(self, refresh, parent=None) -> None:
        super().__init__(parent)
        self._refresh = refresh

    def showPopup(self) -> None:  # noqa: N802 (Qt name)
        self._refresh()
        super().showPopup()
