"""Ray's one known start-up line, kept off the terminal.

Ray 2.60's core worker in the driver logs, from C++ and straight to file descriptor 2, one line
when Ray Data creates its map actors:

    [...] core_worker.cc:2465: Actor with class name: 'MapWorker(MapBatches(FetchChunks))' and ID:
    '...' has constructor arguments in the object store and max_restarts > 0. ...

It comes from Ray Data itself (its actors get an object reference among their constructor
arguments, ray issue 53727), says nothing a user of enrich can act on, and lands in the middle
of the live progress line. No Ray setting silences that line alone (it is logged at ERROR
level), and a Python logging filter never sees it: so, while a run has Ray's actors going,
descriptor 2 goes through a pipe whose reader passes everything on except that line.
"""

from __future__ import annotations

import contextlib
import os
import re
import sys
import threading
from collections.abc import Iterator

KNOWN_LINE = re.compile(rb"\[[^\]\n]*\] core_worker\.cc:\d+: Actor with class name: [^\n]*"
                        rb"has constructor arguments in the object store[^\n]*\n")


def _pump(read_fd: int, out_fd: int) -> None:
    """Copy the pipe to the real stderr without the known line, until the pipe closes. Never
    stops reading early: a writer on a full pipe that nobody reads would hang the run."""
    with contextlib.suppress(OSError):
        while data := os.read(read_fd, 1 << 16):
            data = KNOWN_LINE.sub(b"", data)  # Ray writes each line in one write()
            with contextlib.suppress(OSError):  # a closed terminal: keep draining
                while data:
                    data = data[os.write(out_fd, data):]
    os.close(read_fd)


@contextlib.contextmanager
def without_known_ray_lines() -> Iterator[None]:
    """Within the block, what this process writes to descriptor 2 reaches it without Ray's known
    line. Where stderr is no real descriptor (captured in-process), nothing is changed."""
    try:
        fd = sys.stderr.fileno()
    except (AttributeError, OSError, ValueError):
        yield
        return
    sys.stderr.flush()
    saved = os.dup(fd)
    read_fd, write_fd = os.pipe()
    os.dup2(write_fd, fd)
    os.close(write_fd)
    pump = threading.Thread(target=_pump, args=(read_fd, saved), name="enrich-stderr", daemon=True)
    pump.start()
    try:
        yield
    finally:
        with contextlib.suppress(Exception):
            sys.stderr.flush()
        os.dup2(saved, fd)  # the pipe's last write end: the pump reads to its end and stops
        pump.join(timeout=2.0)
        os.close(saved)
