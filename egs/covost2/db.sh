# shellcheck shell=bash
# Where the corpora live on this machine (ESPnet's db.sh convention). Set them here or in the environment;
# local/data.sh --cv_dir DIR --covost_dir DIR overrides.
COMMONVOICE_EN=${COMMONVOICE_EN:-}   # Common Voice English folder holding clips/ and validated.tsv (CoVoST 2 used CV 4)
COVOST2=${COVOST2:-}                 # folder holding the unpacked covost_v2.en_<lang>.tsv files
