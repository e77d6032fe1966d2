#!/usr/bin/env bash
# Usage: utils/validate_data_dir.sh [--no-text] [--no-feats] [--no-wav] <data-dir>
# Checks a Kaldi data dir; prints each problem as <file>:<line>: <what>. Fix: <how>, exit 1 if any.
# Implementation: python -m blspkd.bin.validate_data_dir (see its --help).
set -euo pipefail
root=$(cd "$(dirname "$(readlink -f "$0")")/.." && pwd)
export PYTHONPATH="${root}${PYTHONPATH:+:${PYTHONPATH}}"
exec python -m blspkd.bin.validate_data_dir "$@"
