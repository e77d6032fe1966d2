"""Small helpers shared by the data-tool entry points: option spellings and user-facing error handling."""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from blspkd.data.audio import AudioError
from blspkd.data.kaldi_dir import DataDirError
from blspkd.utils.config import ConfigError


def opt(name: str) -> tuple[str, ...]:
    """``--foo_bar`` and ``--foo-bar`` for an option named foo_bar (the shell side accepts both)."""
    return (f"--{name}", f"--{name.replace('_', '-')}") if "_" in name else (f"--{name}",)


def run_main(main: Callable[[], int | None]) -> None:
    """Run an entry point; a mistake the user can fix is printed as one clear message (exit 1), not a traceback."""
    try:
        sys.exit(main() or 0)
    except (DataDirError, AudioError, ConfigError, FileNotFoundError) as e:
        logging.getLogger("blspkd").error("%s", e)
        sys.exit(1)
