"""The one command-line dialect of ``blspkd/bin/``: option spellings, ``--help`` layout, error lines and exit codes.

Data tools parse with ``ArgumentParser`` below; config-driven tools (train, decode, make_teacher_data, export) with
``blspkd.utils.config.parse_config``. Both accept ``--foo_bar`` and ``--foo-bar``, print the entry point's docstring
(its Usage block) first in ``--help`` and then every option with its default, and raise ConfigError for a usage
mistake. Every entry point's ``main`` is wrapped in ``cli``, which turns the outcome into one exit code:

    0    success
    1    data error or failed job: input that is missing, unreadable or malformed (the message names file:line), a
         shard that is not done, a file that cannot be written
    2    usage or config error: unknown option or key, bad value, missing required option
    3    internal error, i.e. a bug: the traceback goes to stderr (the job's log), then one summary line
    130  interrupted (Ctrl-C)

A user error (1 or 2) prints ``<prog>: error: <message>`` on stderr and no traceback.
"""
from __future__ import annotations

import argparse
import functools
import sys
import traceback
from collections.abc import Callable

from blspkd.utils.config import ConfigError

EXIT_OK, EXIT_DATA, EXIT_USAGE, EXIT_INTERNAL, EXIT_INTERRUPTED = 0, 1, 2, 3, 130
# Exceptions that describe bad input (exit 1), by module: a class can only be raised once its module is imported, so
# looking them up in sys.modules keeps the light data tools from importing torch, scipy or transformers.
DATA_ERRORS = (
    ("blspkd.data.kaldi_dir", "DataDirError"), ("blspkd.data.audio", "AudioError"), ("blspkd.decode", "DecodeError"),
    ("blspkd.export", "ExportError"), ("blspkd.scoring.text_files", "ScoringError"),
    ("blspkd.convert", "MissingModelPackage"), ("blspkd.convert.ct2_whisper", "Ct2FormatError"),
    ("blspkd.utils.shards", "ShardError"),
)


def opt(name: str) -> tuple[str, ...]:
    """``--foo_bar`` and ``--foo-bar`` for an option named foo_bar (the shell side accepts both)."""
    return (f"--{name}", f"--{name.replace('_', '-')}") if "_" in name else (f"--{name}",)


class ArgumentParser(argparse.ArgumentParser):
    """argparse in the toolkit's dialect: the docstring (Usage first) as description, defaults shown, and a usage
    mistake raised as ConfigError (one ``<prog>: error:`` line and exit 2 through ``cli``)."""

    def __init__(self, prog: str, doc: str | None, **kwargs):
        super().__init__(prog=prog, description=doc, formatter_class=HelpFormatter, **kwargs)

    def error(self, message: str):
        raise ConfigError(f"{message} (see {self.prog} --help)")


class HelpFormatter(argparse.RawDescriptionHelpFormatter):
    """The docstring as written, then each option with its default (as ``parse_config``'s --help prints keys)."""

    def _get_help_string(self, action: argparse.Action) -> str:
        text = action.help or ""
        shown = "default" in text or action.default in (None, False, argparse.SUPPRESS) or not action.option_strings
        if not shown:
            text += f" (default: {action.default})"
        return text


def _data_errors() -> tuple[type[BaseException], ...]:
    found: list[type[BaseException]] = [OSError]
    for module, name in DATA_ERRORS:
        cls = getattr(sys.modules.get(module), name, None)
        if cls is not None:
            found.append(cls)
    return tuple(found)


def prog_of(fn: Callable) -> str:
    """``python -m blspkd.bin.<name>`` of an entry point's function (also when run as ``__main__``)."""
    module = fn.__module__
    if module == "__main__":
        spec = getattr(sys.modules["__main__"], "__spec__", None)
        module = spec.name if spec is not None else sys.argv[0]
    return f"python -m {module}"


def cli(main: Callable[[list[str] | None], int | None]) -> Callable[[list[str] | None], int]:
    """Wrap an entry point's ``main(argv)`` so it returns the exit code of the module docstring's table (``--help``
    still exits 0 through SystemExit). Use: ``if __name__ == "__main__": sys.exit(main())``."""

    @functools.wraps(main)
    def run(argv: list[str] | None = None) -> int:
        prog = prog_of(main)
        try:
            return main(argv) or EXIT_OK
        except ConfigError as e:
            print(f"{prog}: error: {e}", file=sys.stderr)
            return EXIT_USAGE
        except KeyboardInterrupt:
            print(f"{prog}: interrupted", file=sys.stderr)
            return EXIT_INTERRUPTED
        except Exception as e:
            if isinstance(e, _data_errors()):
                print(f"{prog}: error: {e}", file=sys.stderr)
                return EXIT_DATA
            traceback.print_exc()
            print(f"{prog}: internal error: {type(e).__name__}: {e} (a bug: the traceback above shows where; please "
                  "report it)", file=sys.stderr)
            return EXIT_INTERNAL

    return run
