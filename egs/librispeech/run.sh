#!/usr/bin/env bash
# LibriSpeech recipe: BLSP-KD pretraining (KD from the LLM reading the transcript) on LibriSpeech 960 h, instruction
# tuning for transcription, WER on dev/test clean/other. See README.md for the setups and expected resources.
#
# Usage:
#   ./run.sh --local_data_opts "--librispeech_dir /data/LibriSpeech"          # all stages, paper-scale configs, 8 GPUs
#   ./run.sh --stage 1 --stop_stage 2 --nj 32 --local_data_opts "--librispeech_dir /data/LibriSpeech"
#   ./run.sh --stage 4 --ngpu 8 --num_nodes 2                                 # training on 2 nodes x 8 GPUs (Slurm)
#   ./run.sh --pretrain_config conf/pretrain_1gpu24gb.yaml --finetune_config conf/finetune_1gpu24gb.yaml \
#            --llm downloads/Qwen2.5-1.5B-Instruct --ngpu 1                    # one 24 GB GPU
#   ./run.sh --help                                                            # every option with its value
# Whole recipe as one Slurm batch job: utils/submit_recipe.sh --help.
set -euo pipefail

train_set=train                                           # union of the training subsets (local/data.sh)
valid_set=dev_clean
test_sets="dev_clean dev_other test_clean test_other"

# Local Hugging Face directories; stage 0 (local/setup.sh) checks them and prints the download command when one is
# missing (add --local_setup_opts "... --allow_download true" to let it download them once).
speech_encoder=downloads/whisper-large-v2                  # openai/whisper-large-v2 (the paper's); v3: whisper-large-v3
llm=downloads/Qwen2.5-7B-Instruct                          # Qwen/Qwen2.5-7B-Instruct

# BLSPKD_PROG: --help names this script, the command the user typed.
BLSPKD_PROG=$0 ./blspkd.sh \
    --train_set "${train_set}" \
    --valid_set "${valid_set}" \
    --test_sets "${test_sets}" \
    --speech_encoder "${speech_encoder}" \
    --llm "${llm}" \
    --ngpu 8 \
    --nj 32 \
    --max_duration 30.0 \
    --feats_type raw \
    --pretrain_config conf/pretrain.yaml \
    --finetune_config conf/finetune.yaml \
    --decode_config conf/decode.yaml \
    --local_setup_opts "--speech_encoder ${speech_encoder} --llm ${llm}" \
    "$@"
