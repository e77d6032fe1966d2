"""Logging set-up shared by every entry point.

Format: ``[host:rank/world] time (module:line) LEVEL msg`` so that logs of many jobs and ranks can be merged and
grepped.
"""
from __future__ import annotations

import logging
import os
import socket


def setup_logging(level: str | int = "INFO") -> logging.Logger:
    """Configure the root logger once; rank and world size come from torchrun's RANK/WORLD_SIZE (0/1 otherwise)."""
    rank = os.environ.get("RANK", "0")
    world = os.environ.get("WORLD_SIZE", "1")
    host = socket.gethostname().split(".")[0]
    fmt = f"[{host}:{rank}/{world}] %(asctime)s (%(module)s:%(lineno)d) %(levelname)s: %(message)s"
    logging.basicConfig(level=level, format=fmt, force=True)
    return logging.getLogger("blspkd")
