#!/usr/bin/env bash
# Usage: utils/split_data.sh [--per-utt] <data-dir> <num-to-split>
# Writes <data-dir>/split<N>/{1..N} (by speaker) or split<N>utt/{1..N}. Implementation: python -m blspkd.bin.split_data.
set -euo pipefail
root=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
export PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}"
exec python -m blspkd.bin.split_data "$@"
