# shellcheck shell=bash
# Where the corpora live on this machine (ESPnet's db.sh convention). Set them here or in the environment;
# local/data.sh --librispeech_dir DIR overrides.
LIBRISPEECH=${LIBRISPEECH:-}   # folder holding the unpacked subsets: train-clean-100/, dev-clean/, ...
