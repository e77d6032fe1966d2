"""Logging set-up shared by every entry point.

Format: ``[host:rank/world] time (module:line) LEVEL msg`` so that logs of many jobs and ranks can be merged and
grepped.
"""
from __future__ import annotations

import logging
import os
import socket
import sys


class _StderrHandler(logging.StreamHandler):
    """Writes to ``sys.stderr`` as it is when a record is emitted, not as it was when logging was set up: an entry
    point's ``main`` called in-process (tests, notebooks) after stderr was redirected logs to the redirected stream."""

    @property
    def stream(self):
        return sys.stderr

    @stream.setter
    def stream(self, value):
        pass


def setup_logging(level: str | int = "INFO") -> logging.Logger:
    """Configure the root logger once; rank and world size come from torchrun's RANK/WORLD_SIZE (0/1 otherwise)."""
    rank = os.environ.get("RANK", "0")
    world = os.environ.get("WORLD_SIZE", "1")
    host = socket.gethostname().split(".")[0]
    fmt = f"[{host}:{rank}/{world}] %(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, force=True, handlers=[_StderrHandler()])
    return logging.getLogger("blspkd")
