#!/usr/bin/env bash
# Stage 1 of the LibriSpeech recipe: Kaldi data dirs from an unpacked LibriSpeech tree, validated.
#
# Usage: local/data.sh --librispeech_dir /data/LibriSpeech [--train_sets "train-clean-100 train-clean-360 train-other-500"]
#                      [--data_dir data]
#
# Writes data/<subset with _>/ for every train, dev and test subset (data/train_clean_100, data/dev_clean, ...) plus
# data/train, the union of --train_sets. Lists may be separated by spaces or commas (commas survive the word splitting of
# blspkd.sh --local_data_opts). Transcripts are written in sentence case without punctuation (see README.md).
set -euo pipefail

log() { echo "$(date '+%Y-%m-%dT%H:%M:%S') (local/data.sh:${BASH_LINENO[0]}) $*" >&2; }

# shellcheck disable=SC1091
. ./db.sh
librispeech_dir=${LIBRISPEECH}
train_sets="train-clean-100 train-clean-360 train-other-500"
dev_sets="dev-clean dev-other"
test_sets="test-clean test-other"
data_dir=data

help_message=$(sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//')
# shellcheck disable=SC1091
. utils/parse_options.sh

if [ $# -ne 0 ]; then
  echo "local/data.sh: unexpected argument(s) '$*'" >&2
  echo "${help_message}" >&2
  exit 1
fi
if [ -z "${librispeech_dir}" ]; then
  echo "local/data.sh: the LibriSpeech location is not set: pass --librispeech_dir /path/to/LibriSpeech" \
       "(the folder holding train-clean-100/, dev-clean/, ...) or set LIBRISPEECH in db.sh." >&2
  exit 1
fi

train_sets=$(echo ${train_sets} | tr ',' ' ')
dev_sets=$(echo ${dev_sets} | tr ',' ' ')
test_sets=$(echo ${test_sets} | tr ',' ' ')
combine_train=train=$(echo ${train_sets} | tr ' ' ',')
log "preparing ${train_sets} ${dev_sets} ${test_sets} from ${librispeech_dir} into ${data_dir}/"
# shellcheck disable=SC2086
python3 local/prepare_librispeech.py --librispeech_dir "${librispeech_dir}" --out_dir "${data_dir}" \
  --subsets ${train_sets} ${dev_sets} ${test_sets} --combine "${combine_train}"

for subset in ${train_sets} ${dev_sets} ${test_sets} train; do
  utils/validate_data_dir.sh --no-feats "${data_dir}/${subset//-/_}"
done
log "done: $(wc -l < "${data_dir}/train/text") training utterances in ${data_dir}/train"
