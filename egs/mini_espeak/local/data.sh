#!/usr/bin/env bash
# Stage 1 of the mini recipe: synthesise train/dev/test with espeak-ng from real sentences (Debian fortunes), the
# spoken questions (test_questions) by test-only voices, and prepare test_real from Debian's pocketsphinx LibriVox
# clips. Deterministic given --seed.
#
# Usage (blspkd.sh stage 1 runs it with --local_data_opts):
#   local/data.sh [--num_train 9000] [--num_dev 100] [--num_test 200] [--num_questions 0] [--seed 0] [--nj <cores>]
#   ./run.sh --stage 1 --stop_stage 1 --local_data_opts "--num_train 200"   # a smaller corpus
#
# Output: data/{train,dev,test,test_questions,test_real}/{wav.scp,text,utt2spk,spk2utt} (test_questions also
# answers: local/make_questions_set.py), wavs under
# downloads/espeak_wav/ and downloads/espeak_wav_questions/, the voice/speed/pitch of every utterance in
# data/local/espeak_<set>.tsv.
set -euo pipefail
log() {
    local fname=${BASH_SOURCE[1]##*/}
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}

num_train=9000
num_dev=100
num_test=200
num_questions=0         # spoken questions: the first N of local/questions_kept.tsv (0: all 201)
seed=0
nj=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)  # path.sh sets OMP_NUM_THREADS=1, which nproc obeys
wav_dir=downloads/espeak_wav
librivox_dir=/usr/share/pocketsphinx/test/data/librivox
help_message=$(sed -n '2,13p' "$0")
. utils/parse_options.sh
[ $# -eq 0 ] || { echo "$0: unexpected arguments: $*" >&2; exit 1; }

log "synthesising train ${num_train}, dev ${num_dev}, test ${num_test} utterances (seed ${seed}, ${nj} jobs)"
python local/make_espeak_corpus.py --data_dir data --wav_dir "${wav_dir}" --num_train "${num_train}" \
    --num_dev "${num_dev}" --num_test "${num_test}" --seed "${seed}" --nj "${nj}"

# All questions of local/questions_kept.tsv (local/select_questions.py chose them), by the test set's voices.
log "synthesising data/test_questions from local/questions_kept.tsv"
python local/make_questions_set.py --questions local/questions_kept.tsv --data_dir data/test_questions \
    --wav_dir "${wav_dir}_questions" --seed "${seed}" --nj "${nj}" --num_questions "${num_questions}"

log "preparing data/test_real from ${librivox_dir}"
python local/prepare_librivox.py --src "${librivox_dir}" --data_dir data/test_real
log "done: data/{train,dev,test,test_questions,test_real} (blspkd.sh stage 1 validates the sets it is given)"
