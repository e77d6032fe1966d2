#!/usr/bin/env bash
# CoVoST 2 En->X recipe: speech translation by instruction tuning a BLSP-KD model ("Translate the following speech into
# German."), plus transcription; BLEU/chrF with the sacrebleu tokeniser of the target language. See README.md.
#
# Usage:
#   ./run.sh --tgt_lang de --local_data_opts "--cv_dir /data/cv-corpus-4-2019-12-10/en --covost_dir /data/covost2"
#   ./run.sh --tgt_lang ja --stage 1 --stop_stage 2 --local_data_opts "--cv_dir ... --covost_dir ..."
#   ./run.sh --tgt_lang de --stage 5 --finetune_args "--init_from ../librispeech/exp/pretrain/model"
#   ./run.sh --help                                    # every option of blspkd.sh with its value
# --tgt_lang (one of de ca zh-CN fa et mn tr ar sv-SE lv sl ta ja id cy) must come first if given; it picks the data
# sets, the translation task's language and the scoring language. Whole recipe as one Slurm job: utils/submit_recipe.sh.
set -euo pipefail

tgt_lang=de
if [ $# -ge 2 ] && { [ "$1" = --tgt_lang ] || [ "$1" = --tgt-lang ]; }; then
    tgt_lang=$2
    shift 2
fi
. ./path.sh
lang_name=$(python3 local/covost_languages.py "${tgt_lang}")   # fails with the list of valid codes

train_set=train_en_${tgt_lang}
valid_set=dev_en_${tgt_lang}
test_sets="test_en_${tgt_lang}"

speech_encoder=downloads/whisper-large-v2
llm=downloads/Qwen2.5-7B-Instruct

# The configs in conf/ are written for German; the target language's copies (same file with the language name
# replaced) go to exp/conf/, so the experiment tags carry the direction (finetune_en_ja, ...).
mkdir -p exp/conf
for c in pretrain finetune decode; do
    sed -e "s/German/${lang_name}/g" -e "s/_en_de\b/_en_${tgt_lang}/g" "conf/${c}.yaml" > "exp/conf/${c}_en_${tgt_lang}.yaml"
done
export COVOST_TGT_LANG=${tgt_lang}   # local/data.sh's default --tgt_lang, so --local_data_opts need not repeat it

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
    --pretrain_config "exp/conf/pretrain_en_${tgt_lang}.yaml" \
    --finetune_config "exp/conf/finetune_en_${tgt_lang}.yaml" \
    --decode_config "exp/conf/decode_en_${tgt_lang}.yaml" \
    --score_args "--lang ${tgt_lang}" \
    --local_setup_opts "--speech_encoder ${speech_encoder} --llm ${llm}" \
    "$@"
