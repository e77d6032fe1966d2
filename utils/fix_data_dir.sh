#!/usr/bin/env bash
# Usage: utils/fix_data_dir.sh <data-dir>
# Sorts the files, keeps utterances present and usable in every per-utterance file, regenerates spk2utt;
# originals go to <data-dir>/.backup/. Implementation: python -m blspkd.bin.fix_data_dir.
set -euo pipefail
root=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
export PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}"
exec python -m blspkd.bin.fix_data_dir "$@"
