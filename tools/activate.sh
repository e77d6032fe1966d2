# Source this file to use the toolkit's Python: . tools/activate.sh
_blspkd_tools=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
# shellcheck disable=SC1091
. "${_blspkd_tools}/venv/bin/activate"
export HF_HUB_OFFLINE=1 TRANSFORMERS_OFFLINE=1 HF_DATASETS_OFFLINE=1
export PYTHONIOENCODING=UTF-8 LC_ALL=C.UTF-8
unset _blspkd_tools
