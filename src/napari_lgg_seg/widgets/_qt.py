"""Small Qt pieces shared by the widgets."""

from __future__ import annotations

import html

from qtpy.QtWidgets import QComboBox

ERROR_COLOUR = "#e05050"


def status_html(text: str, error: bool = False) -> str:
    """Rich text for a status label: ``text`` escaped (paths may hold ``<``/``&``), in red for an error."""
    text = html.escape(text)
    return f"<span style='color:{ERROR_COLOUR}'>{text}</span>" if error else text


class RefreshingComboBox(QComboBox):
    """A combo box that asks for fresh items right before its list opens."""

    def __init__(self, refresh, parent=None) -> None:
        super().__init__(parent)
        self._refresh = refresh

    def showPopup(self) -> None:  # noqa: N802 (Qt name)
        self._refresh()
        super().showPopup()
