"""utils/parse_options.sh through real bash subprocesses: every Kaldi rule and its error message."""
from __future__ import annotations

import subprocess
from pathlib import Path

import pytest

REPO = Path(__file__).resolve().parents[1]
PARSE_OPTIONS = REPO / "utils" / "parse_options.sh"

SCRIPT = f"""#!/usr/bin/env bash
set -euo pipefail
stage=1
foo_bar=default
use_gpu=false
empty=
help_message="Usage: myscript.sh [options] <dir>
  --stage N    first stage (default: 1)"
. {PARSE_OPTIONS}
echo "stage=$stage foo_bar=$foo_bar use_gpu=$use_gpu empty=$empty"
echo "rest=$#:$*"
"""


@pytest.fixture()
def script(tmp_path: Path) -> Path:
    path = tmp_path / "myscript.sh"
    path.write_text(SCRIPT)
    path.chmod(0o755)
    return path


def run(script: Path, *args: str) -> subprocess.CompletedProcess:
    return subprocess.run([str(script), *args], capture_output=True, text=True, cwd=script.parent, timeout=30)


def test_defaults_and_positionals(script):
    r = run(script, "a", "b")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["stage=1 foo_bar=default use_gpu=false empty=", "rest=2:a b"]


@pytest.mark.parametrize("opt", ["--foo-bar", "--foo_bar"])
def test_dash_and_underscore_set_the_same_variable(script, opt):
    r = run(script, opt, "x y", "pos")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["stage=1 foo_bar=x y use_gpu=false empty=", "rest=1:pos"]


def test_equals_form_and_values_with_special_characters(script):
    r = run(script, "--stage=3", "--foo-bar=a=b 'c' $HOME", "--empty=", "pos")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "stage=3 foo_bar=a=b 'c' $HOME use_gpu=false empty="


def test_double_dash_ends_options(script):
    r = run(script, "--stage", "2", "--", "--not-an-option")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines() == ["stage=2 foo_bar=default use_gpu=false empty=", "rest=1:--not-an-option"]


def test_unknown_option_is_an_error_naming_it(script):
    r = run(script, "--stgae", "2")
    assert r.returncode == 1
    assert r.stdout == ""
    assert r.stderr == "myscript.sh: invalid option --stgae (no variable 'stgae' is declared; see --help)\n"


def test_invalid_option_name(script):
    r = run(script, "--foo.bar", "2")
    assert r.returncode == 1
    assert r.stderr == "myscript.sh: invalid option '--foo.bar' (not a valid option name)\n"


def test_boolean_must_stay_boolean(script):
    assert run(script, "--use-gpu", "true").stdout.startswith("stage=1 foo_bar=default use_gpu=true")
    r = run(script, "--use-gpu", "yes")
    assert r.returncode == 1
    assert r.stderr == 'myscript.sh: option --use-gpu expects "true" or "false", got "yes"\n'


def test_missing_value(script):
    r = run(script, "--stage")
    assert r.returncode == 1
    assert r.stderr == "myscript.sh: option --stage needs a value\n"


@pytest.mark.parametrize("flag", ["--help", "-h"])
def test_help_prints_message_and_exits_zero(script, flag):
    r = run(script, "--stage", "2", flag)
    assert r.returncode == 0
    assert r.stdout == "Usage: myscript.sh [options] <dir>\n  --stage N    first stage (default: 1)\n"


def test_config_file_is_sourced_and_command_line_overrides_it(script, tmp_path):
    conf = tmp_path / "opts.conf"
    conf.write_text("# options\nstage=5\nfoo_bar=\"from conf\"\n")
    r = run(script, "--config", str(conf), "--stage", "7")
    assert r.returncode == 0, r.stderr
    assert r.stdout.splitlines()[0] == "stage=7 foo_bar=from conf use_gpu=false empty="
    # the override also wins when it comes before --config
    r = run(script, "--stage", "7", f"--config={conf}")
    assert r.stdout.splitlines()[0] == "stage=7 foo_bar=from conf use_gpu=false empty="


def test_config_file_with_a_typo_names_file_and_line(script, tmp_path):
    conf = tmp_path / "opts.conf"
    conf.write_text("stage=5\nfoo_baz=1\n")
    r = run(script, "--config", str(conf))
    assert r.returncode == 1
    assert r.stderr == (
        f"myscript.sh: {conf}:2: unknown option 'foo_baz' "
        "(not declared by myscript.sh; check the spelling or see --help)\n"
    )


def test_missing_config_file(script, tmp_path):
    r = run(script, "--config", str(tmp_path / "nope.conf"))
    assert r.returncode == 1
    assert r.stderr == (
        f"myscript.sh: config file '{tmp_path / 'nope.conf'}' (given with --config) does not exist or is not readable\n"
    )


def test_no_helper_variables_leak(tmp_path):
    path = tmp_path / "leak.sh"
    path.write_text(f"set -euo pipefail\nx=1\n. {PARSE_OPTIONS}\ncompgen -v _po_ || true\ndeclare -F _po_die || true\n")
    r = subprocess.run(["bash", str(path), "--x", "2"], capture_output=True, text=True, timeout=30)
    assert r.returncode == 0, r.stderr
    assert r.stdout == ""
