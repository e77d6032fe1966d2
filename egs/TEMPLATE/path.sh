# Sourced by run.sh/blspkd.sh and every job: the toolkit's Python and tools, offline hub, one thread per job.
# Recipes link it (egs/<corpus>/path.sh -> ../TEMPLATE/path.sh); the link is resolved, so MAIN_ROOT is the checkout.
MAIN_ROOT=$(cd "$(dirname "$(readlink -f "${BASH_SOURCE[0]}")")/../.." && pwd)
export MAIN_ROOT
# First use on a fresh machine: install everything (tools/install.sh is idempotent; later runs skip this).
if [ ! -f "${MAIN_ROOT}/tools/venv/bin/activate" ]; then
    echo "path.sh: ${MAIN_ROOT}/tools/venv is missing: running tools/install.sh (once, a few minutes)" >&2
    bash "${MAIN_ROOT}/tools/install.sh" >&2 || { echo "path.sh: tools/install.sh failed (see above)" >&2; return 1 2>/dev/null || exit 1; }
fi
# shellcheck disable=SC1091
. "${MAIN_ROOT}/tools/activate.sh"
export PATH=${MAIN_ROOT}/utils:${PATH}
# Jobs run nj at a time: let each use one thread unless the user asked otherwise.
export OMP_NUM_THREADS=${OMP_NUM_THREADS:-1}
export MKL_NUM_THREADS=${MKL_NUM_THREADS:-1}
