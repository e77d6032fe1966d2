#!/usr/bin/env bash
# Usage: utils/utt2spk_to_spk2utt.sh [<utt2spk>] > <spk2utt>      (reads standard input without a file)
set -euo pipefail
root=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
export PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}"
exec python -m blspkd.bin.utt2spk_to_spk2utt "$@"
