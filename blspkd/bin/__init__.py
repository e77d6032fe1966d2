"""Thin command-line entry points, each run as ``python -m blspkd.bin.<name>`` (Usage block in its docstring)."""
