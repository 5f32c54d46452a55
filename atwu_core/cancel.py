"""A job's stop flag, shared by whoever may stop it (the app's Stop button, a worker's SIGTERM handler, a test)."""

from __future__ import annotations

import threading


class CancelToken:
    """Set from any thread; the loop checks it before every step."""

    def __init__(self) -> None:
        self._event = threading.Event()

    def cancel(self) -> None:
        self._event.set()

    @property
    def cancelled(self) -> bool:
        return self._event.is_set()
