"""esptool's console output, captured: its lines kept per session, its progress bars forwarded.

esptool (used as a library) prints through one process-wide logger. `capture()` installs a logger
that hands each message to the sink of the calling thread, so parallel sessions (a batch on several
ports) keep their lines apart, and nothing reaches the terminal unless the caller prints it.
"""

from __future__ import annotations

import re
import threading
from collections.abc import Callable, Iterator
from contextlib import contextmanager

from esp_pylib.logger import EspLog
from esptool.logger import TemplateLogger, log

_local = threading.local()
_lock = threading.Lock()
_installed = 0
_saved = None
_MARKUP = re.compile(r"\[/?[a-z ]+\]")


class Sink:
    def __init__(self, progress: Callable[[int, int], None] | None = None):
        self.lines: list[str] = []
        self.progress = progress

    def text(self) -> str:
        return "\n".join(self.lines)


class _Dispatch(TemplateLogger):
    def _sink(self) -> Sink | None:
        return getattr(_local, "sink", None)

    def _add(self, text: str) -> None:
        sink = self._sink()
        if sink is not None and text.strip():
            sink.lines.append(_MARKUP.sub("", text.strip()))

    def print(self, *args, **kwargs):
        self._add(kwargs.get("sep", " ").join(str(a) for a in args))

    def note(self, message: str):
        self._add(f"Note: {message}")

    def warning(self, message: str):
        self._add(f"Warning: {message}")

    def error(self, message: str):
        self._add(f"Error: {message}")

    def stage(self, finish: bool = False):
        pass

    def progress_bar(self, cur_iter, total_iters, prefix="", suffix="", bar_length=30):
        sink = self._sink()
        if sink is not None and sink.progress is not None:
            sink.progress(cur_iter, total_iters)

    def set_verbosity(self, verbosity: str):
        pass


@contextmanager
def capture(progress: Callable[[int, int], None] | None = None) -> Iterator[Sink]:
    """esptool's output during the block goes to the returned Sink (this thread only)."""
    global _installed, _saved
    sink = Sink(progress)
    with _lock:
        if _installed == 0:
            _saved = EspLog.instance
            log.set_logger(_Dispatch())
        _installed += 1
    previous = getattr(_local, "sink", None)
    _local.sink = sink
    try:
        yield sink
    finally:
        _local.sink = previous
        with _lock:
            _installed -= 1
            if _installed == 0:
                EspLog.instance = _saved
