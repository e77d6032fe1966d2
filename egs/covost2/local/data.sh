#!/usr/bin/env bash
# Stage 1 of the CoVoST 2 recipe: Kaldi data dirs for En->X speech translation, validated.
#
# Usage: local/data.sh --cv_dir /data/cv-corpus-4-2019-12-10/en --covost_dir /data/covost2 --tgt_lang de
#                      [--audio_reader ffmpeg|soundfile] [--data_dir data]
#
# Writes data/{train,dev,test}_en_<tgt_lang>/ with wav.scp, text, translation, utt2lang, utt2spk and spk2utt.
# --tgt_lang is one of the 15 CoVoST 2 En->X languages: de ca zh-CN fa et mn tr ar sv-SE lv sl ta ja id cy.
#
set -euo pipefail

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (local/data.sh:${BASH_LINENO[0]}) $*" >&2; }

# shellcheck disable=SC1091
. ./db.sh
cv_dir=${COMMONVOICE_EN}
covost_dir=${COVOST2}
tgt_lang=${COVOST_TGT_LANG:-de}   # run.sh --tgt_lang sets COVOST_TGT_LANG
audio_reader=ffmpeg
data_dir=data

help_message=$(sed -n '2,10p' "$0" | sed 's/^# \{0,1\}//')
# shellcheck disable=SC1091
. utils/parse_options.sh

if [ $# -ne 0 ]; then
  echo "local/data.sh: unexpected argument(s) '$*'" >&2
  echo "${help_message}" >&2
  exit 1
fi
if [ -z "${cv_dir}" ] || [ -z "${covost_dir}" ]; then
  echo "local/data.sh: pass --cv_dir (Common Voice English folder with clips/ and validated.tsv) and --covost_dir" \
       "(folder with covost_v2.en_${tgt_lang}.tsv), or set COMMONVOICE_EN and COVOST2 in db.sh." >&2
  exit 1
fi
if [ "${audio_reader}" = ffmpeg ] && ! command -v ffmpeg > /dev/null; then
  echo "local/data.sh: ffmpeg is not installed but --audio_reader ffmpeg needs it to decode mp3:" \
       "install it (apt-get install ffmpeg) or pass --audio_reader soundfile." >&2
  exit 1
fi

log "preparing CoVoST 2 en->${tgt_lang} from ${cv_dir} and ${covost_dir} into ${data_dir}/"
python3 local/prepare_covost2.py --cv_dir "${cv_dir}" --covost_dir "${covost_dir}" --tgt_lang "${tgt_lang}" \
  --out_dir "${data_dir}" --audio_reader "${audio_reader}"

for split in train dev test; do
  utils/validate_data_dir.sh --no-feats "${data_dir}/${split}_en_${tgt_lang}"
done
log "done: $(wc -l < "${data_dir}/train_en_${tgt_lang}/text") training utterances in ${data_dir}/train_en_${tgt_lang}"
