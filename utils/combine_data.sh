#!/usr/bin/env bash
# Usage: utils/combine_data.sh [--extra-files "f1 f2"] <dest-data-dir> <src-data-dir1> <src-data-dir2> ...
# Union of data dirs; a key in two sources is an error naming both. Implementation: python -m blspkd.bin.combine_data.
set -euo pipefail
root=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
export PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}"
exec python -m blspkd.bin.combine_data "$@"
