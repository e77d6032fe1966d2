#!/usr/bin/env bash
# Create a new recipe directory from this template.
#
# Usage:
#   egs/TEMPLATE/setup.sh egs/<new_corpus>
#
# Copied (edited per recipe): run.sh, cmd.sh (choose cmd_backend there), conf/ (e.g. slurm.conf).
# Linked (shared, updated with the toolkit): blspkd.sh, path.sh, utils/.
# Written: local/data.sh, a template that stops with instructions until you write it for your corpus.
set -euo pipefail

if [ $# -ne 1 ] || [ "$1" = "-h" ] || [ "$1" = "--help" ]; then
    sed -n '2,9p' "$0" | sed 's/^# \{0,1\}//'
    [ $# -eq 1 ] && [[ $1 == -* ]] && exit 0
    exit 1
fi
template=$(cd "$(dirname "${BASH_SOURCE[0]}")" && pwd)
main_root=$(dirname "$(dirname "${template}")")
target=$1
if [ -e "${target}" ] && [ -n "$(ls -A "${target}" 2>/dev/null)" ]; then
    echo "$0: ${target} already exists and is not empty; choose a new directory or remove it first" >&2
    exit 1
fi
for f in run.sh cmd.sh blspkd.sh path.sh; do
    [ -f "${template}/${f}" ] || { echo "$0: ${template}/${f} is missing: the checkout is incomplete" >&2; exit 1; }
done
mkdir -p "${target}/local" "${target}/conf"
target=$(cd "${target}" && pwd)
# Relative links keep the recipe working when the whole checkout moves.
rel() { realpath --relative-to="${target}" "$1"; }

cp "${template}/run.sh" "${template}/cmd.sh" "${target}/"
if [ -d "${template}/conf" ]; then
    cp -r "${template}/conf/." "${target}/conf/"
fi
ln -s "$(rel "${template}/blspkd.sh")" "${target}/blspkd.sh"
ln -s "$(rel "${template}/path.sh")" "${target}/path.sh"
ln -s "$(rel "${main_root}/utils")" "${target}/utils"

cat > "${target}/local/data.sh" <<'DATA'
#!/usr/bin/env bash
# Stage 1 of this recipe: write Kaldi data dirs data/<set>/{wav.scp,text,utt2spk,spk2utt[,segments]} for every set that
# run.sh names (--train_set, --valid_set, --test_sets). Keys "<key> <value>", LC_ALL=C sorted, utterance ids prefixed
# by their speaker id; stage 1 validates every dir after this script. Example: egs/mini_espeak/local/data.sh.
#
# Usage (called by blspkd.sh stage 1 with --local_data_opts):
#   local/data.sh [options]
set -euo pipefail
echo "$0: this is the template written by egs/TEMPLATE/setup.sh: write local/data.sh for your corpus first" \
     "(it must create data/<set>/{wav.scp,text,utt2spk,spk2utt} for the sets named in run.sh;" \
     "see egs/mini_espeak/local/data.sh for a complete example)" >&2
exit 1
DATA
chmod +x "${target}/local/data.sh" "${target}/run.sh"
echo "created ${target}: edit run.sh (sets, models, configs), write local/data.sh, choose cmd_backend in cmd.sh"
