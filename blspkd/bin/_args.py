"""Small helpers shared by the data-tool entry points: option spellings and user-facing error handling."""
from __future__ import annotations

import logging
import sys
from collections.abc import Callable

from blspkd.data.kaldi_dir import DataDirError
from blspkd.utils.config import ConfigError


def opt(name: str) -> tuple[str, ...]:
    """``--foo_bar`` and ``--foo-bar`` for an option named foo_bar (the shell side accepts both)."""
    return (f"--{name}", f"--{name.replace('_', '-')}") if "_" in name else (f"--{name}",)


def _user_errors() -> tuple[type[BaseException], ...]:
    errors: list[type[BaseException]] = [DataDirError, ConfigError, FileNotFoundError]
    audio = sys.modules.get("blspkd.data.audio")  # only importable-if-used: keeps the data-dir tools free of scipy
    if audio is not None:
        errors.append(audio.AudioError)
    return tuple(errors)


def run_main(main: Callable[[], int | None]) -> None:
    """Run an entry point; a mistake the user can fix is printed as one clear message (exit 1), not a traceback."""
    try:
        code = main() or 0
    except Exception as e:
        if not isinstance(e, _user_errors()):
            raise
        logging.getLogger("blspkd").error("%s", e)
        sys.exit(1)
    sys.exit(code)
