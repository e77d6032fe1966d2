#!/usr/bin/env bash
# Usage: utils/spk2utt_to_utt2spk.sh [<spk2utt>] > <utt2spk>      (reads standard input without a file)
set -euo pipefail
root=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
export PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}"
exec python -m blspkd.bin.utt2spk_to_spk2utt --reverse "$@"
