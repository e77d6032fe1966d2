#!/usr/bin/env bash
# blspkd.sh: the shared stage script of every recipe (ESPnet asr.sh style).
#
# Usage (from a recipe directory, normally through its run.sh):
#   ./blspkd.sh --train_set train --valid_set dev --test_sets "test test_real" \
#       --speech_encoder downloads/whisper-tiny.en --llm downloads/SmolLM2-135M-Instruct [options]
#   ./run.sh --stage 1 --stop_stage 2 --nj 8      # run.sh adds the recipe's options and passes "$@" last
#   ./run.sh --help                               # every option with its (effective) default
#
# Stages (each guarded by --stage/--stop_stage; --skip_stages, --skip_* drop some):
#   0  recipe-local setup: local/setup.sh, if present (e.g. prepare pretrained models)   -> downloads/, model dirs
#   1  data preparation: local/data.sh, then every data dir is validated               -> data/<set>/
#   2  features: Whisper log-mel, sharded over --nj jobs through ${train_cmd}            -> ${dumpdir}/<set>/feats.scp
#                (--feats_type raw: validated 16 kHz mono audio files instead              -> ${dumpdir}/<set>/wav.scp)
#   3  teacher data: transcript token counts, LLM continuations/answers                 -> ${dumpdir}/<set>/...
#   4  KD pretraining (CIF adapter, PLoRA)                                               -> ${expdir}/<tag>/
#   5  instruction tuning (PLoRA + adapter)                                              -> ${expdir}/<tag>/
#   6  decoding, sharded through ${decode_cmd}                                           -> ${expdir}/<tag>/decode_<set>/
#   7  scoring (WER/CER, BLEU/chrF)                                                      -> result.*, RESULTS.md
#   8  export of a self-contained inference directory                                    -> ${expdir}/<tag>/export/
#
# Finished work is remembered by marker files and skipped (with a log line) unless the options that produced it changed;
# --force true redoes it. One convention (blspkd/utils/shards.py): a marker named .completed[.<part>] is written last
# and holds the signature of what produced the output: <dir>/.completed.stage<N> for stage N here, <dir>/.completed and
# <dir>/shards/.completed.J for the Python tools' merged output and shard J, <exp>/.completed for a finished training. Each stage writes an executable run_stage<N>.sh next to its output (stage 0: in ${expdir})
# that re-runs exactly that stage with the same options (extra options given to it are appended, e.g.
# `data/run_stage1.sh --force true`), and every invocation is appended to ${expdir}/cmd.log.
set -euo pipefail
# The whole script is one { ... } block: bash parses it completely before running it, so editing this file while a
# run is in progress (it can last hours) cannot make the running copy execute a shifted line.
{

log() {
    local fname=${BASH_SOURCE[1]##*/}
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) $*"
}
die() {
    local fname=${BASH_SOURCE[1]##*/}
    echo -e "$(date '+%Y-%m-%dT%H:%M:%S') (${fname}:${BASH_LINENO[0]}:${FUNCNAME[1]}) ERROR: $*" >&2
    exit 1
}
SECONDS=0
script_path=${BASH_SOURCE[0]}
orig_args=("$@")

# The block between the two marker lines is also the --help text: one "name=default  # description" per line,
# "# ..." lines are section titles. Keep every option in it, with its description.
# >>> options
# General
stage=0                 # first stage to run
stop_stage=10000        # last stage to run
skip_stages=""          # space-separated stages to skip, e.g. "3 5"
force=false             # redo stages even when their marker files say they are complete
skip_data_prep=false    # skip stages 0-3 (setup, data, features, teacher data)
skip_train=false        # skip stages 4-5 (KD pretraining, instruction tuning)
skip_eval=false         # skip stages 6-7 (decoding, scoring)
skip_export=false       # skip stage 8 (export)
nj=4                    # parallel jobs for data and feature extraction (stage 2)
inference_nj=4          # parallel jobs for LLM inference (stages 3, 6)
ngpu=0                  # GPUs per node for training (0 = CPU)
num_nodes=1             # nodes for training (more than 1 needs cmd_backend=slurm)
gpu_inference=false     # run stages 3 and 6 on GPUs (through ${cuda_cmd})
cmd_backend=""          # job backend, local or slurm; empty = what cmd.sh sets
dumpdir=dump            # features and teacher data go to ${dumpdir}/<set>
expdir=exp              # experiments go to ${expdir}/<tag>
# Pretrained models (local Hugging Face directories)
speech_encoder=""       # Whisper model dir (its preprocessor_config.json defines the features)
llm=""                  # causal LM dir (teacher and student LLM)
# Data
train_set=""            # training data dir name under data/
valid_set=""            # validation data dir name under data/
test_sets=""            # space-separated evaluation data dir names under data/
local_setup_opts=""     # options passed to local/setup.sh (stage 0)
local_data_opts=""      # options passed to local/data.sh (stage 1)
min_duration=0.1        # seconds; shorter train/valid utterances are dropped in stage 2 (test sets are kept whole)
max_duration=30.0       # seconds; longer train/valid utterances are dropped in stage 2 (Whisper's window is 30 s)
feats_type=fbank        # stage 2: fbank = dump the Whisper log-mel; raw = dump 16 kHz mono FLAC and compute the log-mel
                        # on the training/decoding device (less disk, README.md "Disk and time per 100 h"; large corpora)
feats_args=""           # extra options for python -m blspkd.bin.extract_feats
encoder_cache=false     # stage 2 also writes the frozen encoder's outputs of train/valid sets (for data.encoder_cache)
encoder_cache_args=""   # extra options for python -m blspkd.bin.dump_encoder_outputs (e.g. --pad_to_30s true)
# Teacher data (stage 3)
teacher_args=""         # extra options for the teacher data generation
continuation_sets=""    # sets that get LLM continuations in stage 3 (empty: every set); all get token counts
# Instruction following (stages 3, 6, 7; blspkd/instruction_eval.py): references are the LLM's answers to the text
instruction_config=""   # YAML of named text instructions over test speech (and the text before spoken requests)
instruction_sets=""     # test sets dealt out to those instructions: ${dumpdir}/<set>_<name>, decoded with each
spoken_request_sets=""  # test sets whose speech is the request (spoken questions), answered from speech and text
instruction_exps=""     # further exp dirs whose instruction following stages 6-7 measure too (e.g. exp/pretrain)
# Training (stages 4-5)
warmstart_config=""     # YAML of an optional first phase of stage 4 (cif_ce warm start); KD starts from its model
pretrain_config=""      # YAML of KD pretraining (stage 4)
finetune_config=""      # YAML of instruction tuning (stage 5)
pretrain_args=""        # overrides of pretrain_config keys, e.g. "--optim.lr 2.0e-4 --max_steps 100"
finetune_args=""        # overrides of finetune_config keys
dry_run=false           # stages 4-5: print the training jobs (sbatch/srun lines, each node's torchrun) without running
pretrain_tag=""         # experiment name of stage 4 (empty: derived from the config file name)
finetune_tag=""         # experiment name of stage 5 (empty: derived from the config file name)
# Decoding, scoring, export (stages 6-8)
decode_config=""        # YAML of decoding
decode_args=""          # overrides of decode_config keys
inference_tag=""        # suffix of the decode_<set> directories (empty: none)
inference_model=""      # model or exp dir stages 6-8 use (empty: the stage-5 exp, else stage 4's)
score_args=""           # extra options for scoring
export_args=""          # extra options for export
# <<< options

# Prints the option block above with the values in effect (the script's defaults, or what run.sh passed before --help).
print_help() {
    # The command the user typed: a recipe's run.sh names itself in BLSPKD_PROG.
    echo "Usage: ${BLSPKD_PROG:-$0} [options]   (run from a recipe directory; see the header of ${script_path##*/})"
    sed -n '/^# >>> options$/,/^# <<< options$/p' "${script_path}" | sed '1d;$d' | while IFS= read -r line; do
        if [[ ${line} =~ ^#\ (.*)$ ]]; then
            printf '\n%s:\n' "${BASH_REMATCH[1]}"
        elif [[ ${line} =~ ^([a-z_0-9]+)=[^#]*#\ (.*)$ ]]; then
            local name=${BASH_REMATCH[1]} desc=${BASH_REMATCH[2]}
            printf '  --%-20s %s (default: "%s")\n' "${name}" "${desc}" "${!name}"
        fi
    done
    echo
    echo "Options accept --name value, --name=value, and '-' for '_' (--stop-stage 2); --config FILE reads"
    echo "name=value lines first (the command line wins)."
}

# --help prints the effective values, so parse everything else first (run.sh puts its options before "$@").
want_help=false
parse_args=()
is_value=false  # every option takes a value: the word after "--name" is that value, even if it reads "--help"
for arg in "$@"; do
    if ${is_value}; then
        parse_args+=("${arg}")
        is_value=false
        continue
    fi
    case "${arg}" in
        -h|--help) want_help=true ;;
        --*=*) parse_args+=("${arg}") ;;
        --*) parse_args+=("${arg}"); is_value=true ;;
        *) parse_args+=("${arg}") ;;
    esac
done
[ -f utils/parse_options.sh ] || die "utils/parse_options.sh not found in $(pwd): run this script from a recipe directory" \
    "(egs/<corpus>, created by egs/TEMPLATE/setup.sh), which links utils/"
set -- "${parse_args[@]+"${parse_args[@]}"}"
. utils/parse_options.sh
[ $# -eq 0 ] || die "unexpected positional arguments: $*; every setting is an option (see --help)"
if ${want_help}; then
    print_help
    exit 0
fi

for f in path.sh cmd.sh; do
    [ -f "${f}" ] || die "${f} not found in $(pwd): run from a recipe directory (see egs/TEMPLATE/setup.sh)"
done
. ./path.sh
# cmd.sh picks the backend (cmd_backend=${BLSPKD_CMD_BACKEND:-local}); an explicit --cmd_backend wins.
requested_backend=${cmd_backend}
[ -z "${requested_backend}" ] || export BLSPKD_CMD_BACKEND=${requested_backend}
. ./cmd.sh
if [ -n "${requested_backend}" ] && [ "${requested_backend}" != "${cmd_backend:-}" ]; then
    die "--cmd_backend ${requested_backend} was given but cmd.sh set cmd_backend=${cmd_backend:-}: cmd.sh must read" \
        "BLSPKD_CMD_BACKEND (see egs/TEMPLATE/cmd.sh), or edit it"
fi

# ------------------------------------------------------------------------------------------------ option checks
[[ ${stage} =~ ^[0-9]+$ ]] || die "--stage must be a non-negative integer, got '${stage}'"
[[ ${stop_stage} =~ ^[0-9]+$ ]] || die "--stop_stage must be a non-negative integer, got '${stop_stage}'"
[ "${stage}" -le "${stop_stage}" ] || die "--stage ${stage} is after --stop_stage ${stop_stage}: nothing to run"
for s in ${skip_stages}; do
    [[ ${s} =~ ^[0-8]$ ]] || die "--skip_stages: '${s}' is not a stage number (0-8)"
done
for n in nj inference_nj ngpu num_nodes; do
    [[ ${!n} =~ ^[0-9]+$ ]] || die "--${n} must be a non-negative integer, got '${!n}'"
done
[ "${nj}" -ge 1 ] || die "--nj must be at least 1"
if [ -n "${instruction_sets}${spoken_request_sets}" ]; then
    [ -n "${instruction_config}" ] || die "--instruction_sets/--spoken_request_sets need --instruction_config (a YAML" \
        "of named instructions, see blspkd/instruction_eval.py)"
    [ -f "${instruction_config}" ] || die "--instruction_config ${instruction_config}: no such file"
    for s in ${instruction_sets} ${spoken_request_sets}; do
        [[ " ${test_sets} " == *" ${s} "* ]] || die "--instruction_sets/--spoken_request_sets: '${s}' is not one of" \
            "--test_sets '${test_sets}'"
    done
fi

# True when stage $1 lies in [stage, stop_stage] and no --skip_* switch drops it.
stage_requested() {
    local n=$1 s
    [ "${stage}" -le "${n}" ] && [ "${stop_stage}" -ge "${n}" ] || return 1
    for s in ${skip_stages}; do
        [ "${s}" = "${n}" ] && { log "skipping stage ${n} (--skip_stages)"; return 1; }
    done
    if { ${skip_data_prep} && [ "${n}" -le 3 ]; } || { ${skip_train} && [ "${n}" -ge 4 ] && [ "${n}" -le 5 ]; } \
        || { ${skip_eval} && [ "${n}" -ge 6 ] && [ "${n}" -le 7 ]; } || { ${skip_export} && [ "${n}" -eq 8 ]; }; then
        log "skipping stage ${n} (--skip_* switch)"
        return 1
    fi
    return 0
}

# write_stage_script <file> <stage>: an executable script that re-runs exactly this stage with this invocation's options.
# A run started by such a script (BLSPKD_RERUN set) leaves the scripts as they are, so extra options (--force true) given
# to it are not baked in. Written to a temporary file and renamed: bash reads a running script as it goes.
write_stage_script() {
    local file=$1 n=$2
    [ -z "${BLSPKD_RERUN:-}" ] || return 0
    mkdir -p "$(dirname "${file}")"
    {
        echo "#!/usr/bin/env bash"
        echo "# Re-runs stage ${n} as run on $(date '+%Y-%m-%dT%H:%M:%S') on $(hostname); extra options are appended."
        echo "set -euo pipefail"
        printf 'cd %q\n' "$(pwd)"
        printf 'BLSPKD_RERUN=1 exec ./%q' "${script_path##*/}"
        printf ' %q' "${orig_args[@]+"${orig_args[@]}"}"
        printf ' --stage %d --stop_stage %d "$@"\n' "${n}" "${n}"
    } > "${file}.tmp"
    chmod +x "${file}.tmp"
    mv "${file}.tmp" "${file}"
}

# stage_done <dir> <stage> <signature>: <dir> holds the stage's finished output, made with these options (no --force).
stage_done() {
    [ -f "$1/.completed.stage$2" ] && [ "$(cat "$1/.completed.stage$2")" = "$3" ] && ! ${force}
}
# stage_stale <dir> <stage>: after stage_done failed, <dir> holds output of other options (or --force): start afresh.
# Without a marker the stage was interrupted; its tools resume what they finished (their own markers check that).
stage_stale() {
    ${force} || [ -f "$1/.completed.stage$2" ]
}
mark_stage_done() {  # mark_stage_done <dir> <stage> <signature>
    echo "$3" > "$1/.completed.stage$2.tmp"
    mv "$1/.completed.stage$2.tmp" "$1/.completed.stage$2"
}
# files_md5 <dir> <find tests...>: one md5 over the names and contents of the files that find selects under <dir>.
files_md5() {
    local dir=$1
    shift
    (cd "${dir}" && find . "$@" -print0 | sort -z | xargs -0 md5sum | md5sum | cut -d' ' -f1)
}

# The sets named on the command line, in order, without duplicates.
all_sets() {
    local s seen=" "
    for s in ${train_set} ${valid_set} ${test_sets}; do
        [[ ${seen} == *" ${s} "* ]] || { echo "${s}"; seen+="${s} "; }
    done
}
sets=$(all_sets)
# The instruction-following dump dirs (<set>_<name>, written by stage 3) and the settings of their answers.
instruction_derived_sets=""
instruction_max_new_tokens=48
instruction_train_utts=0
if [ -n "${instruction_config}" ]; then
    instruction_derived_sets=$(python -m blspkd.bin.make_instruction_sets --config "${instruction_config}" \
        --names "${instruction_sets}") || die "--instruction_config ${instruction_config}: see the error above"
    instruction_max_new_tokens=$(python -m blspkd.bin.make_instruction_sets --config "${instruction_config}" \
        --get max_new_tokens)
    instruction_train_utts=$(python -m blspkd.bin.make_instruction_sets --config "${instruction_config}" \
        --get train_num_utts)
fi
in_list() {  # in_list <word> <list>
    [[ " $2 " == *" $1 "* ]]
}
# The teacher tasks stage 3 runs on set $1 (besides token counts).
teacher_tasks() {
    if in_list "$1" "${instruction_derived_sets}"; then echo instruction; return; fi
    { [ -n "${continuation_sets}" ] && ! in_list "$1" "${continuation_sets}"; } || echo continuation
    ! in_list "$1" "${spoken_request_sets}" || echo spoken_instruction
    [ "$1" != "${train_set}" ] || [ "${instruction_train_utts}" -eq 0 ] || echo instruction
}
# The decoding passes of set $1, one "decode dir name|decode options" per line; $2 = all, or instruction (only the
# instruction-following passes: what --instruction_exps decode).
decode_passes() {
    local dset=$1 mode=$2 suffix=${inference_tag:+_${inference_tag}}
    local answer_opts="--instruction null --max_new_tokens ${instruction_max_new_tokens}"
    if in_list "${dset}" "${instruction_derived_sets}"; then
        echo "decode_${dset}${suffix}|--task instruction ${answer_opts}"
        return
    fi
    if [ "${mode}" = all ]; then
        # The task of decode_config (transcription unless it says otherwise), and the behaviour-alignment pass:
        # continuations from speech where stage 3 wrote the LLM's continuations from text (its 48-token limit).
        echo "decode_${dset}${suffix}|"
        [ ! -f "${dumpdir}/${dset}/continuation" ] || \
            echo "decode_${dset}${suffix}_continuation|--task continuation --instruction null --max_new_tokens 48"
    fi
    ! in_list "${dset}" "${spoken_request_sets}" || echo "decode_${dset}${suffix}_answer|--task spoken_instruction ${answer_opts}"
}

mkdir -p "${expdir}"
{
    printf '# %s  %s  cwd=%s\n' "$(date '+%Y-%m-%dT%H:%M:%S')" "$(hostname)" "$(pwd)"
    printf '%q' "$0"
    printf ' %q' "${orig_args[@]+"${orig_args[@]}"}"
    echo
} >> "${expdir}/cmd.log"
log "$0 ${orig_args[*]+"${orig_args[*]}"}"
# This machine's cores (path.sh's OMP_NUM_THREADS=1, which nproc obeys, is for many parallel jobs): CPU training
# jobs get them all, CPU decoding jobs share them.
ncores=$(env -u OMP_NUM_THREADS -u OMP_THREAD_LIMIT nproc)
log "stages ${stage}-${stop_stage}, cmd_backend=${cmd_backend:-unset}, nj=${nj}, sets: $(echo ${sets})"

# ================================================================================================ stage 0: setup
if [ ${stage} -le 0 ] && [ ${stop_stage} -ge 0 ] && stage_requested 0; then
    if [ -f local/setup.sh ]; then
        # local/setup.sh is idempotent by contract: only the recipe knows what it prepares and how to check it.
        log "stage 0: recipe setup: local/setup.sh ${local_setup_opts}"
        write_stage_script "${expdir}/run_stage0.sh" 0
        # shellcheck disable=SC2086
        bash local/setup.sh ${local_setup_opts}
    else
        log "stage 0: no local/setup.sh in this recipe; nothing to do"
    fi
    log "stage 0 done (${SECONDS} s elapsed)"
fi

# ================================================================================================ stage 1: data
if [ ${stage} -le 1 ] && [ ${stop_stage} -ge 1 ] && stage_requested 1; then
    [ -n "${sets}" ] || die "stage 1 needs the data sets: give --train_set/--valid_set/--test_sets"
    [ -f local/data.sh ] || die "stage 1: local/data.sh not found in $(pwd); every recipe writes one (see egs/TEMPLATE)"
    # Any change to the recipe's local/ scripts (data.sh and the programs it calls) invalidates the prepared data.
    local_md5=$(find local -type f -not -path '*/__pycache__/*' | LC_ALL=C sort | xargs cat | md5sum | cut -d' ' -f1)
    signature="local/data.sh ${local_data_opts} | sets: $(echo ${sets}) | local/: ${local_md5}"
    if stage_done data 1 "${signature}"; then
        log "stage 1: data already prepared with the same options (data/.completed.stage1); skipping (--force true redoes it)"
    else
        log "stage 1: data preparation: local/data.sh ${local_data_opts}"
        rm -f data/.completed.stage1
        write_stage_script data/run_stage1.sh 1
        # shellcheck disable=SC2086
        bash local/data.sh ${local_data_opts}
        for dset in ${sets}; do
            [ -d "data/${dset}" ] || die "local/data.sh did not create data/${dset} (named by --train_set/--valid_set/--test_sets)"
            utils/validate_data_dir.sh --no-feats "data/${dset}"
            log "stage 1: data/${dset}: $(wc -l < "data/${dset}/utt2spk") utterances, valid"
        done
        mark_stage_done data 1 "${signature}"
    fi
    log "stage 1 done (${SECONDS} s elapsed)"
fi

# ================================================================================================ stage 2: features
if [ ${stage} -le 2 ] && [ ${stop_stage} -ge 2 ] && stage_requested 2; then
    [ -n "${sets}" ] || die "stage 2 needs the data sets: give --train_set/--valid_set/--test_sets"
    [ -n "${speech_encoder}" ] || die "stage 2 needs --speech_encoder (a Whisper model directory)"
    [ -f "${speech_encoder}/preprocessor_config.json" ] || die "stage 2: ${speech_encoder}/preprocessor_config.json" \
        "not found: --speech_encoder must be a local Whisper model directory (run stage 0, or convert one)"
    case "${feats_type}" in fbank|raw) ;; *) die "--feats_type must be fbank or raw, got '${feats_type}'" ;; esac
    write_stage_script "${dumpdir}/run_stage2.sh" 2
    for dset in ${sets}; do
        src=data/${dset}
        out=${dumpdir}/${dset}
        [ -f "${src}/wav.scp" ] || die "stage 2: ${src}/wav.scp not found: run stage 1 first"
        num_utts=$(wc -l < "${src}/wav.scp")
        [ "${num_utts}" -ge 1 ] || die "stage 2: ${src}/wav.scp is empty"
        _nj=$((nj < num_utts ? nj : num_utts))
        # Test sets are scored on every utterance: the duration filter applies to training data only.
        filter_opts=""
        if [ "${dset}" = "${train_set}" ] || [ "${dset}" = "${valid_set}" ]; then
            filter_opts="--min_duration ${min_duration} --max_duration ${max_duration}"
        fi
        signature="extractor=$(cd "${speech_encoder}" && pwd) nj=${_nj} ${filter_opts} ${feats_args}"
        [ "${feats_type}" = fbank ] || signature+=" feats_type=${feats_type}"  # fbank dumps of before stay valid
        signature+=" | $(cat "${src}/wav.scp" "${src}/text" | md5sum | cut -d' ' -f1)"
        if stage_done "${out}" 2 "${signature}"; then
            log "stage 2: ${out} already complete with the same options; skipping (--force true redoes it)"
            continue
        fi
        if [ -d "${out}" ] && stage_stale "${out}" 2; then
            log "stage 2: removing ${out} (written with other options, or --force)"
            rm -rf "${out}"
        fi
        mkdir -p "${out}/log"
        log "stage 2: extracting features of ${src} (${num_utts} utterances) in ${_nj} jobs -> ${out}" \
            "(logs: ${out}/log/extract.*.log)"
        start=${SECONDS}
        # shellcheck disable=SC2086
        ${train_cmd} JOB=1:"${_nj}" "${out}/log/extract.JOB.log" \
            python -m blspkd.bin.extract_feats --data_dir "${src}" --out_dir "${out}" \
                --feature_extractor "${speech_encoder}" --num_shards "${_nj}" --shard JOB --feats_type "${feats_type}" \
                ${filter_opts} ${feats_args}
        python -m blspkd.bin.extract_feats --data_dir "${src}" --out_dir "${out}" --num_shards "${_nj}" --merge true \
            2>&1 | tee "${out}/log/merge.log"
        utils/validate_data_dir.sh "${out}"
        [ -f "${out}/.completed" ] || die "stage 2: extract_feats --merge did not write ${out}/.completed; see ${out}/log/merge.log"
        mark_stage_done "${out}" 2 "${signature}"
        log "stage 2: ${out}: $(wc -l < "${out}/utt2num_frames") of ${num_utts} utterances kept (${feats_type})," \
            "$((SECONDS - start)) s"
    done
    if ${encoder_cache}; then
        # Training reads these instead of running the frozen encoder every epoch (blspkd/data/encoder_cache.py);
        # decoding reads the log-mel, so the test sets get none. Skipped when the same encoder wrote them already.
        for dset in ${train_set} ${valid_set}; do
            log "stage 2: encoder outputs of ${dumpdir}/${dset} (log: ${dumpdir}/${dset}/log/encoder_out.log)"
            # shellcheck disable=SC2086
            ${train_cmd} --num_threads "${ncores}" "${dumpdir}/${dset}/log/encoder_out.log" \
                python -m blspkd.bin.dump_encoder_outputs \
                --dump_dir "${dumpdir}/${dset}" --speech_encoder "${speech_encoder}" ${encoder_cache_args}
        done
    fi
    log "stage 2 done (${SECONDS} s elapsed)"
fi

# ================================================================================================ stage 3: teacher data
if [ ${stage} -le 3 ] && [ ${stop_stage} -ge 3 ] && stage_requested 3; then
    [ -n "${sets}" ] || die "stage 3 needs the data sets: give --train_set/--valid_set/--test_sets"
    [ -n "${llm}" ] || die "stage 3 needs --llm (a chat causal-LM directory: the teacher)"
    write_stage_script "${dumpdir}/run_stage3.sh" 3
    # The teacher frames its prompts as the trained model is decoded: the system prompt and instruction separator of
    # the training configs, in the order stages 4-5 chain them through init_from.
    model_configs=()
    for f in ${warmstart_config} ${pretrain_config} ${finetune_config}; do
        [ -f "${f}" ] || die "stage 3: training config ${f} not found (it frames the teacher's prompts)"
        model_configs+=("${f}")
    done
    model_configs_opt=(--model_configs "[$(IFS=,; echo "${model_configs[*]-}")]")
    configs_md5=$(cat "${model_configs[@]+"${model_configs[@]}"}" /dev/null | md5sum | cut -d' ' -f1)
    _cmd=${decode_cmd}
    _opts=""
    if ${gpu_inference}; then _cmd=${cuda_cmd}; _opts="--gpu 1"; fi
    # teacher_answers <dump dir> <task> <jobs>: the LLM's text-input answers of a teacher task, sharded and resumable.
    teacher_answers() {
        local out=$1 task=$2 _nj=$3 task_opts=(--task "$2")
        [ "${task}" = continuation ] || task_opts+=(--max_new_tokens "${instruction_max_new_tokens}")
        if [ -d "${out}/teacher/${task}" ] && ${force}; then
            log "stage 3: removing ${out}/teacher/${task} (--force)"
            rm -rf "${out}/teacher/${task}"
        fi
        log "stage 3: teacher ${task} answers of ${out} ($(wc -l < "${out}/text") utterances) in ${_nj} jobs" \
            "(logs: ${out}/log/teacher_${task}.*.log; resumable: re-running redoes only what is missing)"
        # shellcheck disable=SC2086
        ${_cmd} ${_opts} JOB=1:"${_nj}" "${out}/log/teacher_${task}.JOB.log" \
            python -m blspkd.bin.make_teacher_data --dump_dir "${out}" --llm "${llm}" "${model_configs_opt[@]}" \
                "${task_opts[@]}" --num_shards "${_nj}" --shard JOB ${teacher_args}
        # shellcheck disable=SC2086
        python -m blspkd.bin.make_teacher_data --dump_dir "${out}" --llm "${llm}" "${model_configs_opt[@]}" \
            "${task_opts[@]}" --num_shards "${_nj}" --merge true ${teacher_args} 2>&1 \
            | tee "${out}/log/teacher_${task}_merge.log"
        [ -f "${out}/teacher/${task}/.completed" ] || die "stage 3: merging the teacher shards of ${out} failed;" \
            "see ${out}/log/teacher_${task}_merge.log"
    }
    # teacher_data <set>: token counts (the CIF targets N, seconds, no generation) and the set's teacher tasks.
    teacher_data() {
        local dset=$1 out=${dumpdir}/$1 tasks task complete=true
        [ -f "${out}/.completed" ] || die "stage 3: ${out} is not a complete dump dir: run stage 2 first"
        mkdir -p "${out}/log"
        num_utts=$(wc -l < "${out}/text")
        _nj=$((inference_nj < num_utts ? inference_nj : num_utts))
        tasks=$(echo $(teacher_tasks "${dset}"))  # one line: in_list matches words between spaces
        if in_list spoken_instruction "${tasks}"; then
            python -m blspkd.bin.make_instruction_sets --config "${instruction_config}" --spoken_requests "${out}"
        fi
        if [ "${dset}" = "${train_set}" ] && in_list instruction "${tasks}"; then
            python -m blspkd.bin.make_instruction_sets --config "${instruction_config}" --train_dir "${out}"
        fi
        # The teacher's shards carry their own settings (blspkd/teacher.py): what changed is regenerated, the rest kept.
        signature="llm=$(cd "${llm}" && pwd) nj=${_nj} ${teacher_args} | configs: ${configs_md5}"
        signature+=" | $(md5sum < "${out}/text" | cut -d' ' -f1)"
        if [ -z "${tasks}" ]; then
            signature="token counts only | ${signature}"
        elif [ "${tasks}" != continuation ]; then
            signature+=" | tasks: $(echo ${tasks}) max_new_tokens=${instruction_max_new_tokens}"
            signature+=" $({ cat "${out}/instruction" 2>/dev/null || true; } | md5sum | cut -d' ' -f1)"
        fi
        for task in ${tasks}; do
            [ -f "${out}/$(python -m blspkd.bin.tasks reference "${task}")" ] || complete=false
        done
        if [ -f "${out}/utt2num_tokens" ] && ${complete} && stage_done "${out}" 3 "${signature}"; then
            log "stage 3: ${out} already has its teacher data with the same options; skipping (--force true redoes it)"
            return
        fi
        rm -f "${out}/.completed.stage3"
        python -m blspkd.bin.make_teacher_data --dump_dir "${out}" --llm "${llm}" --task tokens \
            2>&1 | tee "${out}/log/utt2num_tokens.log"
        [ -n "${tasks}" ] || log "stage 3: ${out}: token counts only (not in --continuation_sets '${continuation_sets}')"
        for task in ${tasks}; do
            teacher_answers "${out}" "${task}" "${_nj}"
        done
        mark_stage_done "${out}" 3 "${signature}"
    }
    for dset in ${sets}; do
        teacher_data "${dset}"
    done
    # Instruction following: each instruction gets its own subset of the set (after the set's token counts, which the
    # subsets copy), and the LLM's answers to it over the transcripts.
    for dset in ${instruction_sets}; do
        python -m blspkd.bin.make_instruction_sets --config "${instruction_config}" --dump_dir "${dumpdir}/${dset}" \
            2>&1 | tee "${dumpdir}/${dset}/log/instruction_sets.log"
    done
    for dset in ${instruction_derived_sets}; do
        teacher_data "${dset}"
    done
    log "stage 3 done (${SECONDS} s elapsed)"
fi

# Stages 4-5: one torchrun agent per node (utils/launch_train.sh) started through ${cuda_cmd}; with --num_nodes > 1
# the Slurm backend runs it once per node through srun and the agents meet in one c10d rendezvous. Re-running a stage
# resumes from the newest checkpoint; <exp>/.completed marks a finished run (delete the exp dir to train again).
run_training() {  # run_training <stage> <config> <exp dir> <extra args...>
    local n=$1 config=$2 exp=$3
    shift 3
    [ -n "${config}" ] || die "stage ${n} needs its training config (--pretrain_config / --finetune_config)"
    [ -n "${speech_encoder}" ] && [ -n "${llm}" ] || die "stage ${n} needs --speech_encoder and --llm"
    local train_args=(utils/launch_train.sh --ngpu "${ngpu}" -- -m blspkd.bin.train --config "${config}" --exp_dir "${exp}"
        --model.speech_encoder "${speech_encoder}" --model.llm "${llm}" --data.train "[{path: ${dumpdir}/${train_set}}]")
    [ -z "${valid_set}" ] || train_args+=(--data.valid "[${dumpdir}/${valid_set}]")
    train_args+=("$@")
    if ${dry_run}; then  # nothing is checked, written or started: the data and models may not exist yet
        log "stage ${n} (dry run): ${exp} on ${num_nodes} node(s) x ${ngpu} GPU(s); the job command:"
        ${cuda_cmd} --dry_run --gpu "${ngpu}" --num_nodes "${num_nodes}" "${exp}/log/train.log" "${train_args[@]}"
        log "stage ${n} (dry run): the torchrun command each node runs:"
        if [ "${num_nodes}" -gt 1 ]; then  # run_slurm.py sets these on each node
            NNODES=${num_nodes} NODE_RANK='$NODE_RANK' MASTER_ADDR='$MASTER_ADDR' MASTER_PORT='$MASTER_PORT' \
                SLURM_JOB_ID='$SLURM_JOB_ID' "${train_args[0]}" --dry_run "${train_args[@]:1}"
        else
            NNODES=1 "${train_args[0]}" --dry_run "${train_args[@]:1}"
        fi
        return 0
    fi
    [ -f "${dumpdir}/${train_set}/.completed" ] || die "stage ${n}: ${dumpdir}/${train_set} is incomplete: run stage 2"
    if [ -f "${exp}/.completed" ] && ! ${force}; then
        log "stage ${n}: ${exp} already trained ($(head -n 1 "${exp}/.completed")); skipping (--force true retrains)"
        return 0
    fi
    if ${force} && [ -d "${exp}" ]; then
        log "stage ${n}: --force: removing ${exp}"
        rm -rf "${exp}"
    fi
    mkdir -p "${exp}/log"
    write_stage_script "${exp}/run_stage${n}.sh" "${n}"
    log "stage ${n}: training ${exp} on ${num_nodes} node(s) x $((ngpu > 0 ? ngpu : 1)) process(es)" \
        "(log: ${exp}/log/train.log; TensorBoard: ${exp}/tensorboard)"
    local thread_opt=()
    [ "${ngpu}" -gt 0 ] || thread_opt=(--num_threads "${ncores}")
    ${cuda_cmd} --gpu "${ngpu}" --num_nodes "${num_nodes}" "${thread_opt[@]+"${thread_opt[@]}"}" "${exp}/log/train.log" \
        "${train_args[@]}"
    [ -f "${exp}/.completed" ] || die "stage ${n}: training stopped before the end (no ${exp}/.completed); see" \
        "${exp}/log/train.log. Re-run the stage to resume from the newest checkpoint."
}

# ================================================================================================ stage 4: KD pretraining
if [ ${stage} -le 4 ] && [ ${stop_stage} -ge 4 ] && stage_requested 4; then
    warm=()
    if [ -n "${warmstart_config}" ]; then  # phase 1 of stage 4 (doc/method.md §8): the KD phase starts from its model
        warm_exp=${expdir}/$(basename "${warmstart_config%.*}")
        run_training 4 "${warmstart_config}" "${warm_exp}"
        warm=(--init_from "${warm_exp}/model")
    fi
    # shellcheck disable=SC2086
    run_training 4 "${pretrain_config}" "${expdir}/${pretrain_tag:-$(basename "${pretrain_config%.*}")}" \
        "${warm[@]+"${warm[@]}"}" ${pretrain_args}
    log "stage 4 done (${SECONDS} s elapsed)"
fi

# ================================================================================================ stage 5: instruction tuning
if [ ${stage} -le 5 ] && [ ${stop_stage} -ge 5 ] && stage_requested 5; then
    pre_exp=${expdir}/${pretrain_tag:-$(basename "${pretrain_config%.*}")}
    init=()
    if [ -n "${pretrain_config}${pretrain_tag}" ]; then
        [ -f "${pre_exp}/model/model.safetensors" ] || ${dry_run} || die "stage 5 starts from stage 4's model, but" \
            "${pre_exp}/model is missing: run stage 4 first (or drop --pretrain_config to fine-tune from scratch)"
        init=(--init_from "${pre_exp}/model")
    fi
    # shellcheck disable=SC2086
    run_training 5 "${finetune_config}" "${expdir}/${finetune_tag:-$(basename "${finetune_config%.*}")}" \
        "${init[@]+"${init[@]}"}" ${finetune_args}
    log "stage 5 done (${SECONDS} s elapsed)"
fi

# ---------------------------------------------------------------------------------------- stages 6-8: model to evaluate
# The model directory stages 6-8 decode, score and export: --inference_model, else the experiment of stage 5 when it is
# configured, else that of stage 4 (tags derived from the config file names as stages 4-5 derive them).
inference_exp_dir() {
    if [ -n "${inference_model}" ]; then
        echo "${inference_model}"
    elif [ -n "${finetune_tag}" ] || [ -n "${finetune_config}" ]; then
        echo "${expdir}/${finetune_tag:-$(basename "${finetune_config%.*}")}"
    elif [ -n "${pretrain_tag}" ] || [ -n "${pretrain_config}" ]; then
        echo "${expdir}/${pretrain_tag:-$(basename "${pretrain_config%.*}")}"
    else
        die "stages 6-8 need a model: give --inference_model DIR, or --finetune_config/--pretrain_config (or their tags)"
    fi
}
# The trained model inside it (save_pretrained output in <exp>/model, or the directory itself).
inference_model_dir() {
    local d=$1
    if [ -f "${d}/model/config.json" ] && [ -f "${d}/model/model.safetensors" ]; then
        echo "${d}/model"
    elif [ -f "${d}/config.json" ] && [ -f "${d}/model.safetensors" ]; then
        echo "${d}"
    else
        die "no trained model in ${d} (neither ${d}/model/ nor ${d} holds config.json + model.safetensors): run the" \
            "training stages (4-5) to the end, or point --inference_model at a model directory"
    fi
}

# ================================================================================================ stage 6: decoding
if [ ${stage} -le 6 ] && [ ${stop_stage} -ge 6 ] && stage_requested 6; then
    [ -n "${test_sets}" ] || die "stage 6 needs --test_sets"
    exp=$(inference_exp_dir)
    write_stage_script "${exp}/run_stage6.sh" 6
    decode_opts=()
    [ -z "${decode_config}" ] || decode_opts+=(--config "${decode_config}")
    if ${gpu_inference}; then
        _cmd="${cuda_cmd} --gpu 1"
        decode_opts+=(--device cuda)
    else
        _cmd=${decode_cmd}
        decode_opts+=(--device cpu)
    fi
    decode_config_sig=$({ [ -z "${decode_config}" ] || cat "${decode_config}"; } | md5sum | cut -d' ' -f1)
    # decode_exp <exp dir> <all|instruction>: every decoding pass (decode_passes) of every test set with its model.
    decode_exp() {
        local exp=$1 mode=$2 model dset src pass ddir passes model_sig dump_sig signature f
        model=$(inference_model_dir "${exp}")
        # A pass whose model, settings and dump dir are those of its finished decoding is skipped here, without
        # starting Python (the shards would skip themselves too, but each start costs seconds).
        model_sig=$(for f in config.json model.safetensors tokenizer.json tokenizer_config.json chat_template.jinja \
                        preprocessor_config.json; do [ ! -f "${model}/${f}" ] || cat "${model}/${f}"; done \
                    | md5sum | cut -d' ' -f1)
        log "stage 6: decoding ${test_sets} ${instruction_derived_sets} (${mode} passes) with ${model}" \
            "(${decode_config:-default settings} ${decode_args})"
        for dset in ${test_sets} ${instruction_derived_sets}; do
            mapfile -t passes < <(decode_passes "${dset}" "${mode}")
            [ "${#passes[@]}" -ge 1 ] || continue
            src=${dumpdir}/${dset}
            [ -f "${src}/.completed" ] || die "stage 6: ${src} is not a complete dump dir: run stage 2 (and 3) first"
            num_utts=$(wc -l < "${src}/text")
            _nj=$((inference_nj < num_utts ? inference_nj : num_utts))
            [ "${_nj}" -ge 1 ] || _nj=1
            # CPU jobs share the cores instead of each starting one thread per core.
            threads=$((ncores / _nj)); [ "${threads}" -ge 1 ] || threads=1
            thread_opt=""
            ${gpu_inference} || thread_opt="--num_threads ${threads}"
            # The dump dir's files (not its stage markers, nor the encoder outputs that decoding does not read).
            dump_sig=$(files_md5 "${src}" -maxdepth 1 -type f ! -name '.completed.stage*' ! -name 'encoder_out*')
            for pass in "${passes[@]}"; do
                ddir=${exp}/${pass%%|*}
                # shellcheck disable=SC2206
                task_opts=(${pass#*|})
                signature="model ${model_sig} | dump ${dump_sig} | nj=${_nj} ${thread_opt} ${decode_opts[*]}"
                signature+=" ${pass#*|} ${decode_args} | ${decode_config_sig}"
                if [ -f "${ddir}/.completed" ] && stage_done "${ddir}" 6 "${signature}"; then
                    log "stage 6: ${ddir} already decoded with the same model, settings and data; skipping" \
                        "(--force true redoes it)"
                    continue
                fi
                rm -f "${ddir}/.completed.stage6"
                if ${force} && [ -d "${ddir}/shards" ]; then
                    log "stage 6: removing ${ddir}/shards (--force)"
                    rm -rf "${ddir}/shards"
                fi
                mkdir -p "${ddir}/log"
                start=${SECONDS}
                # Each shard skips itself when already decoded with the same settings and model (see blspkd/decode.py).
                # shellcheck disable=SC2086
                ${_cmd} ${thread_opt} JOB=1:"${_nj}" "${ddir}/log/decode.JOB.log" \
                    python -m blspkd.bin.decode "${decode_opts[@]}" --model_dir "${model}" --dump_dir "${src}" \
                        --out_dir "${ddir}" --num_shards "${_nj}" --shard JOB "${task_opts[@]+"${task_opts[@]}"}" \
                        ${decode_args}
                # shellcheck disable=SC2086
                python -m blspkd.bin.decode "${decode_opts[@]}" --model_dir "${model}" --dump_dir "${src}" \
                    --out_dir "${ddir}" --num_shards "${_nj}" --merge true "${task_opts[@]+"${task_opts[@]}"}" \
                    ${decode_args} 2>&1 | tee "${ddir}/log/merge.log"
                [ -f "${ddir}/.completed" ] || die "stage 6: merging the shards of ${ddir} failed; see ${ddir}/log/merge.log"
                mark_stage_done "${ddir}" 6 "${signature}"
                log "stage 6: ${ddir}: ${num_utts} utterances in ${_nj} jobs, $((SECONDS - start)) s;" \
                    "$(grep -o 'real-time factor [0-9.]*, [0-9.]* generated tokens/s' "${ddir}/log/merge.log" | tail -n 1)"
            done
        done
    }
    decode_exp "${exp}" all
    for e in ${instruction_exps}; do
        decode_exp "${e}" instruction
    done
    log "stage 6 done (${SECONDS} s elapsed)"
fi

# ================================================================================================ stage 7: scoring
if [ ${stage} -le 7 ] && [ ${stop_stage} -ge 7 ] && stage_requested 7; then
    exp=$(inference_exp_dir)
    write_stage_script "${exp}/run_stage7.sh" 7
    n_scored=0
    # The code that turns hypotheses into scores and RESULTS.md, and the versions of the packages it scores with
    # (SCORING_PACKAGES of blspkd/scoring/scorer.py): a change to either scores everything again.
    scorer_sig=$(cd "${MAIN_ROOT}/blspkd" && cat scoring/*.py scoring/*.json bin/score.py tasks.py | md5sum | cut -d' ' -f1)
    scorer_sig+=" $(python -c 'from blspkd.scoring.scorer import SCORING_PACKAGES as p, package_versions as v
print(*(f"{k}=={x}" for k, x in v(list(p)).items()))')" || die "stage 7: the scoring packages do not import" \
        "(bash tools/install.sh installs them)"
    # score_exp <exp dir> <all|instruction>: score every complete decode dir of decode_passes.
    score_exp() {
        local exp=$1 mode=$2 dset pass ddir task score_opts signature
        for dset in ${test_sets} ${instruction_derived_sets}; do
            for pass in $(decode_passes "${dset}" "${mode}" | cut -d'|' -f1); do
                ddir=${exp}/${pass}
                [ -f "${ddir}/.completed" ] || continue
                # Stage 6 wrote the task's references next to the hypotheses (text, continuation, response, ...).
                task=$(sed -n 's/^task: *//p' "${ddir}/decode_config.yaml")
                if [ ! -f "${ddir}/ref.txt" ]; then
                    log "stage 7: ${ddir}: no references for task ${task} in ${dumpdir}/${dset}; not scored"
                    continue
                fi
                n_scored=$((n_scored + 1))
                # Skipped without starting Python when the hypotheses, references, task and scorer are unchanged.
                signature="scorer ${scorer_sig} | ${score_args} | $(cat "${ddir}/hyp.txt" "${ddir}/ref.txt" \
                    "${ddir}/decode_config.yaml" | md5sum | cut -d' ' -f1)"
                if [ -f "${ddir}/result.json" ] && stage_done "${ddir}" 7 "${signature}"; then
                    log "stage 7: ${ddir} already scored from the same hypotheses and references; skipping" \
                        "(--force true redoes it)"
                    continue
                fi
                rm -f "${ddir}/.completed.stage7"
                # The task registry (blspkd/tasks.py) says how the task is scored.
                score_opts=$(python -m blspkd.bin.tasks score_options "${task}") || die "stage 7: ${ddir}: task '${task}'"
                log "stage 7: scoring ${ddir} (task ${task}: ${score_opts})"
                # shellcheck disable=SC2086
                python -m blspkd.bin.score --ref "${ddir}/ref.txt" --hyp "${ddir}/hyp.txt" ${score_opts} --lang en \
                    --out_dir "${ddir}" ${score_args} 2>&1 | tee "${ddir}/score.log"
                mark_stage_done "${ddir}" 7 "${signature}"
            done
        done
    }
    score_exp "${exp}" all
    for e in ${instruction_exps}; do
        score_exp "${e}" instruction
    done
    [ "${n_scored}" -ge 1 ] || die "stage 7: nothing to score: no complete ${exp}/decode_<set>* for test sets" \
        "'${test_sets}'; run stage 6 first"
    # RESULTS.md gathers every result.json under ${expdir}: rewritten when one of them (or the scorer) changed.
    signature="scorer ${scorer_sig} | $(files_md5 "${expdir}" -name result.json)"
    if [ -f RESULTS.md ] && stage_done "${expdir}" 7 "${signature}"; then
        log "stage 7: RESULTS.md already up to date with every result.json under ${expdir}; skipping"
    else
        python -m blspkd.bin.score --aggregate "${expdir}" --results_md RESULTS.md
        mark_stage_done "${expdir}" 7 "${signature}"
    fi
    log "stage 7 done: ${n_scored} decode dirs scored or up to date, and RESULTS.md (${SECONDS} s elapsed)"
fi

# ================================================================================================ stage 8: export
if [ ${stage} -le 8 ] && [ ${stop_stage} -ge 8 ] && stage_requested 8; then
    exp=$(inference_exp_dir)
    model=$(inference_model_dir "${exp}")
    out=${exp}/export
    results_opt=()
    [ ! -f RESULTS.md ] || results_opt=(--results_md RESULTS.md)
    # The model, the options and the results (RESULTS.md without its generation-time comment) decide the export.
    signature="${export_args} | $(cat "${model}/config.json" "${model}/model.safetensors" | md5sum | cut -d' ' -f1)"
    [ ! -f RESULTS.md ] || signature+=" | $(grep -v '^<!-- Generated' RESULTS.md | md5sum | cut -d' ' -f1)"
    if [ -f "${out}/export_info.json" ] && stage_done "${exp}" 8 "${signature}"; then
        log "stage 8: ${out} already exported from the same model; skipping (--force true redoes it)"
    else
        write_stage_script "${exp}/run_stage8.sh" 8
        rm -f "${exp}/.completed.stage8"
        log "stage 8: exporting ${model} to ${out} ${export_args}"
        # shellcheck disable=SC2086
        python -m blspkd.bin.export --model_dir "${model}" --out_dir "${out}" "${results_opt[@]+"${results_opt[@]}"}" \
            ${export_args}
        mark_stage_done "${exp}" 8 "${signature}"
        log "stage 8: try it: python -m blspkd.bin.infer --model ${out} --audio <file.wav>"
        log "stage 8: or talk to it in a browser: python -m blspkd.bin.serve --model ${out}"
    fi
    log "stage 8 done (${SECONDS} s elapsed)"
fi

log "successfully finished stages ${stage}-${stop_stage} in ${SECONDS} s"
exit 0
}
