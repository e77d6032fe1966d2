#!/usr/bin/env bash
# Run the blspkd test suite on CPU, offline, installing whatever is missing first.
#
# Usage (from anywhere):
#   bash tools/run_tests.sh                 # the whole suite (about 17 min on a 2-core CPU)
#   bash tools/run_tests.sh -m "not slow"   # the quick part (a few minutes)
#   bash tools/run_tests.sh test/test_cif.py -k gradcheck   # any pytest arguments
set -euo pipefail
root=$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)
bash "${root}/tools/install.sh"
# shellcheck disable=SC1091
. "${root}/tools/activate.sh"
cd "${root}"
rc=0
python -m pytest "$@" || rc=$?
# pytest exits 5 when the selection holds no test: that is a mistake in the arguments, not a pass.
[ ${rc} -eq 5 ] && echo "run_tests.sh: pytest collected no test (check the arguments)" >&2
exit ${rc}
