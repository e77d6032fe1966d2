#!/usr/bin/env bash
# Recipe entry point (copied by egs/TEMPLATE/setup.sh): names this corpus's sets, models and configs, then runs the
# shared stage script. Options given here come first, the user's last, so the command line wins.
#
# Usage:
#   ./run.sh                                   # all stages
#   ./run.sh --stage 1 --stop_stage 2 --nj 8   # data preparation and features only
#   ./run.sh --help                            # every option with its value
set -euo pipefail

train_set=train
valid_set=dev
test_sets="test"

speech_encoder=downloads/whisper-tiny.en   # a local Whisper model directory (see local/setup.sh)
llm=downloads/SmolLM2-135M-Instruct        # a local causal LM directory

# BLSPKD_PROG: --help names this script, the command the user typed.
BLSPKD_PROG=$0 ./blspkd.sh \
    --train_set "${train_set}" \
    --valid_set "${valid_set}" \
    --test_sets "${test_sets}" \
    --speech_encoder "${speech_encoder}" \
    --llm "${llm}" \
    --pretrain_config conf/pretrain.yaml \
    --finetune_config conf/finetune.yaml \
    --decode_config conf/decode.yaml \
    "$@"
