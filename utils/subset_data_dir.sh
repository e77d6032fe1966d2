#!/usr/bin/env bash
# Usage (Kaldi argument order):
#   utils/subset_data_dir.sh <src-dir> <N> <dest-dir>                 N random utterances (--seed S, default 0)
#   utils/subset_data_dir.sh --first|--last <src-dir> <N> <dest-dir>
#   utils/subset_data_dir.sh --utt-list <file> <src-dir> <dest-dir>
#   utils/subset_data_dir.sh --spk-list <file> <src-dir> <dest-dir>
# The options of python -m blspkd.bin.subset_data_dir (--first N src dst, ...) are accepted as well.
set -euo pipefail
root=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
export PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}"

mode=--random; list=""; seed=0
while [[ $# -gt 0 && "$1" == --* ]]; do
  case "$1" in
    --first|--last|--random) mode="$1"; shift ;;
    --utt-list|--utt_list) mode=--utt_list; list="$2"; shift 2 ;;
    --spk-list|--spk_list) mode=--spk_list; list="$2"; shift 2 ;;
    --seed) seed="$2"; shift 2 ;;
    -h|--help) sed -n "2,/^set -euo/p" "$0" | sed "\$d"; exit 0 ;;
    *) echo "$0: unknown option $1 (see $0 --help)" >&2; exit 1 ;;
  esac
done
if [[ -n "${list}" ]]; then
  [[ $# -eq 2 ]] || { echo "$0: expected <src-dir> <dest-dir> after ${mode}" >&2; exit 1; }
  exec python -m blspkd.bin.subset_data_dir "${mode}" "${list}" "$1" "$2"
fi
if [[ $# -eq 3 && "$2" =~ ^[0-9]+$ ]]; then    # Kaldi order: <src> <N> <dst>
  exec python -m blspkd.bin.subset_data_dir "${mode}" "$2" --seed "${seed}" "$1" "$3"
fi
if [[ $# -eq 3 && "$1" =~ ^[0-9]+$ ]]; then    # python order: --first <N> <src> <dst>
  exec python -m blspkd.bin.subset_data_dir "${mode}" "$1" --seed "${seed}" "$2" "$3"
fi
echo "$0: expected <src-dir> <N> <dest-dir> (see $0 --help)" >&2
exit 1
