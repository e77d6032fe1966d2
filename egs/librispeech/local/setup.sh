#!/usr/bin/env bash
# Stage 0: make sure the pretrained models exist as local Hugging Face directories; with --allow_download true, fetch
# missing ones from the hub (the toolkit is offline by default: HF_HUB_OFFLINE=1, nothing is downloaded unasked).
#
# Usage: local/setup.sh --speech_encoder downloads/whisper-large-v2 --llm downloads/Qwen2.5-7B-Instruct [--allow_download true]
#
# A directory that already holds config.json is used as it is (no network). A missing one is an error that prints the
# download command; with --allow_download true it is downloaded with
# `hf download <hub id> --local-dir <dir>` (huggingface_hub's CLI; gated models such as Llama 3 need `hf auth login`
# first), the hub id being known from the directory name: whisper-large-v2, whisper-large-v3, whisper-medium, ...
# (openai/), Qwen2.5-*-Instruct (Qwen/), Meta-Llama-3-8B-Instruct, Llama-3.1-8B-Instruct (meta-llama/).
# On a machine without internet, download elsewhere and copy the directories here.
set -euo pipefail

speech_encoder=""
llm=""
allow_download=false
help_message=$(sed -n '2,12p' "$0" | sed 's/^# \{0,1\}//')
# shellcheck disable=SC1091
. utils/parse_options.sh

hub_id() {  # hub_id <dir>: the hub repository a known directory name comes from
    local name
    name=$(basename "$1")
    case "${name}" in
        whisper-*) echo "openai/${name}" ;;
        Qwen2.5-*|Qwen2-*|Qwen3-*) echo "Qwen/${name}" ;;
        Meta-Llama-3-*|Llama-3.*) echo "meta-llama/${name}" ;;
        SmolLM2-*) echo "HuggingFaceTB/${name}" ;;
        *) return 1 ;;
    esac
}

for dir in ${speech_encoder} ${llm}; do
    if [ -f "${dir}/config.json" ]; then
        echo "local/setup.sh: ${dir} is ready"
        continue
    fi
    id=$(hub_id "${dir}") || {
        echo "local/setup.sh: ${dir}/config.json not found and '$(basename "${dir}")' is not a known hub model name;" \
             "put a Hugging Face model directory there (save_pretrained output) or name a known model" >&2
        exit 1
    }
    if ! ${allow_download}; then
        echo "local/setup.sh: ${dir}/config.json not found. Download it once (network needed):" >&2
        echo "    HF_HUB_OFFLINE=0 hf download ${id} --local-dir ${dir}" >&2
        echo "  or re-run this script with --allow_download true, or copy a Hugging Face model directory there" >&2
        exit 1
    fi
    command -v hf > /dev/null || { echo "local/setup.sh: ${dir} is missing and the 'hf' CLI (huggingface_hub) is" \
        "not installed; pip install huggingface_hub, or copy the model directory there" >&2; exit 1; }
    echo "local/setup.sh: downloading ${id} into ${dir}"
    if ! HF_HUB_OFFLINE=0 hf download "${id}" --local-dir "${dir}" \
            --exclude "*.pt" --exclude "*.bin" --exclude "*.msgpack" --exclude "*.h5"; then
        echo "local/setup.sh: downloading ${id} failed (no network, or a gated model without 'hf auth login');" \
             "download it elsewhere and copy it to ${dir}" >&2
        exit 1
    fi
done
