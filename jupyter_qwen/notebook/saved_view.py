"""What a widget leaves in a saved notebook for readers without its JavaScript.

GitHub, nbviewer and a notebook opened without its kernel show an output's ``text/html`` or
``text/plain``, not the live widget. ``SavedView`` gives a widget both, written from its
figures (``static_text`` / ``static_html``), and re-publishes its output when those
figures settle (ready, failed, stopped) so that the saved notebook holds the final ones.
"""

from __future__ import annotations

import weakref
from typing import Any

_SHOWN: weakref.WeakSet = weakref.WeakSet()


def republish_shown() -> None:
    """Re-publish every shown view from the running cell (the magics call this), so that a
    notebook run headless, which keeps only a cell's own messages, saves the latest figures."""
    for view in list(_SHOWN):
        view.refresh_saved_view()


class SavedView:
    """A mixin for a widget class: text and HTML fallbacks, and a display it can refresh."""

    _display_handle: Any = None

    def static_text(self) -> str:
        raise NotImplementedError

    def static_html(self) -> str:
        raise NotImplementedError

    def _repr_mimebundle_(self, **kwargs: Any) -> dict | tuple[dict, dict]:
        bundle = super()._repr_mimebundle_(**kwargs) or {}
        data, metadata = bundle if isinstance(bundle, tuple) else (bundle, None)
        data = data | {"text/plain": self.static_text(), "text/html": self.static_html()}
        return data if metadata is None else (data, metadata)

    def show(self, display: Any = None) -> SavedView:
        """Display the widget in the running cell, under a display id ``republish`` updates
        (``display``: IPython's, unless the caller has its own)."""
        if display is None:
            from IPython.display import display

        self._display_handle = display(self, display_id=True)
        _SHOWN.add(self)
        return self

    def republish(self) -> None:
        """Replace the displayed output with the current fallbacks (the live view stays)."""
        handle = self._display_handle
        if handle is not None:
            handle.update(self)

    def refresh_saved_view(self) -> None:
        """Bring the figures up to date, then re-publish (a widget may do more first)."""
        self.republish()
