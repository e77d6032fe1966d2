# shellcheck shell=bash
# Parse --name value options into pre-declared shell variables (Kaldi semantics). Source it, don't run it.
#
# Usage (in a script, after declaring every option with its default):
#   stage=1
#   use_gpu=false
#   help_message="Usage: $0 [options] <data-dir>"
#   . utils/parse_options.sh   # consumes the options from "$@", leaves the positional arguments
#
# Rules:
#   --foo-bar VALUE, --foo_bar VALUE and --foo-bar=VALUE all set foo_bar, which must already be declared
#       (an undeclared name is an error naming the option).
#   A variable whose current value is true or false only accepts true or false.
#   --config FILE (any number of times) sources FILE (lines "name=value" for declared names) before the
#       other options are applied, so options on the command line override the file.
#   --help or -h prints $help_message and exits 0.
#   Parsing stops at the first argument that does not start with "--" ("--" itself is consumed).
# Works under `set -euo pipefail`. Helper variables are prefixed _po_ and unset afterwards.

_po_prog=$(basename "$0")

_po_die() {
  echo "${_po_prog}: $*" >&2
  exit 1
}

_po_varname() {
  # --foo-bar[=x] -> foo_bar; rejects names that cannot be shell variables.
  local n=${1#--}
  n=${n%%=*}
  n=${n//-/_}
  [[ ${n} =~ ^[A-Za-z_][A-Za-z0-9_]*$ ]] || _po_die "invalid option '$1' (not a valid option name)"
  printf '%s' "${n}"
}

# Pass 1: source every --config file first so that the command line overrides them.
_po_args=("$@")
_po_i=0
while [ ${_po_i} -lt ${#_po_args[@]} ]; do
  _po_a=${_po_args[${_po_i}]}
  _po_conf=""
  case "${_po_a}" in
    --) break ;;
    --config)
      [ $((_po_i + 1)) -lt ${#_po_args[@]} ] || _po_die "option --config needs a file name"
      _po_conf=${_po_args[$((_po_i + 1))]}
      _po_i=$((_po_i + 1)) ;;
    --config=*) _po_conf=${_po_a#--config=} ;;
    --*=*) ;;
    --help|-h) ;;
    --*) _po_i=$((_po_i + 1)) ;;  # skip the value of an ordinary option
    *) break ;;
  esac
  if [ -n "${_po_conf}" ]; then
    [ -f "${_po_conf}" ] && [ -r "${_po_conf}" ] || _po_die "config file '${_po_conf}' (given with --config) does not exist or is not readable"
    # Check the assignments before sourcing: a typo in a config must not silently create a new variable.
    _po_ln=0
    while IFS= read -r _po_line || [ -n "${_po_line}" ]; do
      _po_ln=$((_po_ln + 1))
      if [[ ${_po_line} =~ ^[[:space:]]*([A-Za-z_][A-Za-z0-9_]*)= ]]; then
        _po_n=${BASH_REMATCH[1]}
        [ -n "${!_po_n+x}" ] || _po_die "${_po_conf}:${_po_ln}: unknown option '${_po_n}' (not declared by ${_po_prog}; check the spelling or see --help)"
      fi
    done < "${_po_conf}"
    # shellcheck disable=SC1090
    . "${_po_conf}"
  fi
  _po_i=$((_po_i + 1))
done

# Pass 2: apply the command-line options in order.
while [ $# -gt 0 ]; do
  case "$1" in
    --) shift; break ;;
    --help|-h)
      if [ -n "${help_message:-}" ]; then
        printf '%s\n' "${help_message}"
      else
        echo "${_po_prog}: no help message available (the script does not set help_message)"
      fi
      exit 0 ;;
    --config) shift 2 ;;  # already sourced in pass 1
    --config=*) shift ;;
    --*)
      _po_name=$(_po_varname "$1") || exit 1
      if [[ $1 == *=* ]]; then
        _po_value=${1#*=}
        _po_shift=1
      else
        [ $# -ge 2 ] || _po_die "option $1 needs a value"
        _po_value=$2
        _po_shift=2
      fi
      [ -n "${!_po_name+x}" ] || _po_die "invalid option $1 (no variable '${_po_name}' is declared; see --help)"
      _po_old=${!_po_name}
      if [ "${_po_old}" = true ] || [ "${_po_old}" = false ]; then
        [ "${_po_value}" = true ] || [ "${_po_value}" = false ] \
          || _po_die "option $1 expects \"true\" or \"false\", got \"${_po_value}\""
      fi
      printf -v "${_po_name}" '%s' "${_po_value}"
      shift ${_po_shift} ;;
    *) break ;;
  esac
done

unset _po_prog _po_args _po_i _po_a _po_conf _po_ln _po_line _po_n _po_name _po_value _po_shift _po_old
unset -f _po_die _po_varname
true
