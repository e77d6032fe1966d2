"""The task registry (blspkd/tasks.py) for shell scripts and readers: list it, or print what one task needs.

Usage:
    python -m blspkd.bin.tasks list                          # every task: instruction, files, metrics
    python -m blspkd.bin.tasks score_options continuation    # -> --metric align --allow_missing (stage 7)
    python -m blspkd.bin.tasks reference translation         # -> translation (the file its references are in)

Exit status 2 for an unknown task (the message lists the known ones).
"""
from __future__ import annotations

import sys

from blspkd import tasks
from blspkd.bin._args import ArgumentParser, cli


@cli
def main(argv: list[str] | None = None) -> int:
    p = ArgumentParser("python -m blspkd.bin.tasks", __doc__)
    p.add_argument("what", choices=["list", "score_options", "reference"])
    p.add_argument("task", nargs="?", help="a task name (score_options, reference)")
    args = p.parse_args(argv)
    if args.what == "list":
        print(tasks.table(), end="")
        return 0
    if args.task is None:
        p.error(f"{args.what} needs a task name")
    print(" ".join(tasks.score_options(args.task)) if args.what == "score_options"
          else tasks.get_task(args.task).reference)  # an unknown task: a TaskError, i.e. a ConfigError (exit 2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
