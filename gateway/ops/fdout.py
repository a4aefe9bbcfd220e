"""Standard output as its file descriptor, for the log writer (``gateway.ops.logwriter``): whole lines
only, even on a non-blocking pipe that several processes share.

The writer thread never holds ``sys.stdout``'s buffer lock, so a stalled reader cannot block the
interpreter's own flush at exit. Under gevent the pipe is non-blocking (gateway/serving/output.py),
where a write may go out in part and another process's lines could land in the gap. So a batch goes
out in writes of at most ``PIPE_BUF`` bytes cut at a line's end, which a pipe takes whole or not at
all. Only a line longer than that may go out in part; its end then goes first at the next write.
"""
from __future__ import annotations

import os
import select

PIPE_BUF = select.PIPE_BUF  # POSIX: a pipe write of up to this many bytes is never interleaved


class PartlyWritten(BlockingIOError):
    """A full pipe took only part of a batch: ``unwritten`` of its lines were not written."""

    def __init__(self, unwritten: int):
        super().__init__(f"{unwritten} lines not written: the pipe is full")
        self.unwritten = unwritten


class Descriptor:
    def __init__(self, fd: int):
        self.fd = fd
        self._rest = b""  # the end of a long line a full pipe cut off: it goes first

    @property
    def pending(self) -> bool:
        """Whether the end of a line waits to be written (a flush with no new lines writes it)."""
        return bool(self._rest)

    def write(self, text: str) -> None:
        carried = len(self._rest)
        data = self._rest + text.encode("utf-8", "backslashreplace")
        view, start = memoryview(data), 0
        try:
            while start < len(data):
                end = len(data)
                if end - start > PIPE_BUF:
                    end = data.rfind(b"\n", start, start + PIPE_BUF) + 1
                    if end <= start:  # one line longer than PIPE_BUF: alone, and it may go in part
                        end = data.find(b"\n", start) + 1 or len(data)
                start += os.write(self.fd, view[start:end])
        except BlockingIOError:
            if start < carried:  # not even the carried end went: it stays, and all of this batch is lost
                self._rest = data[start:carried]
                raise PartlyWritten(text.count("\n")) from None
            line_end = start  # what was taken ends at a line's end, or the end of a line begun must follow
            if start and data[start - 1] != ord("\n"):
                line_end = data.find(b"\n", start) + 1 or len(data)
            self._rest = data[start:line_end]
            raise PartlyWritten(data.count(b"\n", line_end)) from None
        self._rest = b""

    def forget(self) -> None:
        self._rest = b""  # in a forked child: the end of the parent's line is the parent's to write

    def flush(self) -> None:
        pass
