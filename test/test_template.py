"""The recipe template: setup.sh makes a working recipe; blspkd.sh's --help, option checks, stage guards, markers,
re-run scripts, and stages 1-2 on a tiny corpus (stage 2 with the tiny random Whisper's feature extractor)."""
from __future__ import annotations

import json
import os
import re
import stat
from pathlib import Path

import numpy as np
import pytest
from fixtures.audio import build_speech_dir, default_utts, write_data_dir
from fixtures.recipe import REPO, TEMPLATE, run_script

from blspkd.data.feats_io import load_scp
from blspkd.data.kaldi_dir import read_kv, write_kv


def declared_options() -> dict[str, str]:
    """name -> default, read from the option block of blspkd.sh independently of its --help code."""
    text = (TEMPLATE / "blspkd.sh").read_text()
    block = text.split("# >>> options\n", 1)[1].split("# <<< options\n", 1)[0]
    out = {}
    for line in block.splitlines():
        m = re.match(r'^([a-z_0-9]+)=("([^"]*)"|(\S*))\s+#', line)
        if m:
            out[m.group(1)] = m.group(3) if m.group(3) is not None else m.group(4)
    return out


def test_setup_creates_a_working_recipe(tmp_path):
    target = tmp_path / "egs" / "new_corpus"
    res = run_script(REPO, str(TEMPLATE / "setup.sh"), str(target))
    assert res.returncode == 0, res.stdout
    for name in ("run.sh", "cmd.sh"):  # copied: edited per recipe
        assert (target / name).is_file() and not (target / name).is_symlink()
        assert (target / name).read_text() == (TEMPLATE / name).read_text()
    assert os.access(target / "run.sh", os.X_OK)
    links = {"blspkd.sh": TEMPLATE / "blspkd.sh", "path.sh": TEMPLATE / "path.sh", "utils": REPO / "utils"}
    for name, dest in links.items():
        link = target / name
        assert link.is_symlink() and not os.readlink(link).startswith("/"), f"{name} must be a relative link"
        assert link.resolve() == dest.resolve()
    # The recipe works: --help through run.sh shows run.sh's values.
    res = run_script(target, "./run.sh", "--help")
    assert res.returncode == 0, res.stdout
    assert '--train_set            training data dir name under data/ (default: "train")' in res.stdout
    assert res.stdout.startswith("Usage: ./run.sh [options]")  # the command the user typed, not ./blspkd.sh
    # Its local/data.sh is a template that stops with instructions, and stage 1 fails on it.
    res = run_script(target, "./run.sh", "--stage", "1", "--stop_stage", "1")
    assert res.returncode != 0
    assert "the template written by egs/TEMPLATE/setup.sh: write local/data.sh for your corpus first" in res.stdout
    assert not (target / "data" / ".completed.stage1").exists()


def test_setup_refuses_an_existing_recipe(tmp_path):
    target = tmp_path / "corpus"
    target.mkdir()
    (target / "run.sh").write_text("mine\n")
    res = run_script(REPO, str(TEMPLATE / "setup.sh"), str(target))
    assert res.returncode == 1
    assert f"{target} already exists and is not empty" in res.stdout
    assert (target / "run.sh").read_text() == "mine\n"


def test_help_lists_every_option_with_its_default(recipe_dir):
    options = declared_options()
    assert {"stage", "stop_stage", "skip_stages", "nj", "inference_nj", "ngpu", "num_nodes", "gpu_inference",
            "cmd_backend", "speech_encoder", "llm", "train_set", "valid_set", "test_sets", "dumpdir", "expdir",
            "min_duration", "max_duration", "teacher_args", "pretrain_config", "finetune_config",
            "pretrain_args", "finetune_args", "decode_config", "decode_args", "inference_tag", "skip_data_prep",
            "skip_train", "skip_eval", "skip_export", "force"} <= set(options)
    res = run_script(recipe_dir, "./blspkd.sh", "--help")
    assert res.returncode == 0, res.stdout
    listed = dict(re.findall(r'^  --([a-z_0-9]+) .*\(default: "([^"]*)"\)$', res.stdout, flags=re.M))
    assert listed == options
    # Values given before --help (as run.sh does) are shown; option names accept '-'.
    res = run_script(recipe_dir, "./blspkd.sh", "--stop-stage", "2", "--test_sets=a b", "--help")
    assert res.returncode == 0
    assert re.search(r'^  --stop_stage .*\(default: "2"\)$', res.stdout, flags=re.M)
    assert re.search(r'^  --test_sets .*\(default: "a b"\)$', res.stdout, flags=re.M)
    # "--help" as the value of an option is that value, not a request for help.
    res = run_script(recipe_dir, "./blspkd.sh", "--decode_args", "--help", "--help")
    assert res.returncode == 0
    assert re.search(r'^  --decode_args .*\(default: "--help"\)$', res.stdout, flags=re.M)


@pytest.mark.parametrize(
    "args, message",
    [
        (["--stgae", "1"], "--stgae"),
        (["--stage", "2", "--stop_stage", "1"], "--stage 2 is after --stop_stage 1: nothing to run"),
        (["--stage", "x"], "--stage must be a non-negative integer, got 'x'"),
        (["--skip_stages", "1 9"], "--skip_stages: '9' is not a stage number (0-8)"),
        (["--nj", "0"], "--nj must be at least 1"),
        (["--force", "maybe"], 'option --force expects "true" or "false", got "maybe"'),
        (["--dry_run", "yes"], 'option --dry_run expects "true" or "false", got "yes"'),
        (["--stage", "1", "extra"], "unexpected positional arguments: extra"),
        (["--cmd_backend", "bogus"], "unknown cmd_backend 'bogus'"),
    ],
)
def test_bad_options_are_clear_errors(recipe_dir, args, message):
    res = run_script(recipe_dir, "./blspkd.sh", *args)
    assert res.returncode != 0
    assert message in res.stdout
    assert "Traceback" not in res.stdout


def test_must_run_from_a_recipe_directory(tmp_path):
    res = run_script(tmp_path, str(TEMPLATE / "blspkd.sh"), "--stage", "1")
    assert res.returncode == 1
    assert "utils/parse_options.sh not found" in res.stdout and "egs/TEMPLATE/setup.sh" in res.stdout


def test_stage_guards_and_skips(recipe_dir):
    # Stage 0 without local/setup.sh does nothing and does not reach stage 1.
    res = run_script(recipe_dir, "./blspkd.sh", "--stage", "0", "--stop_stage", "0")
    assert res.returncode == 0, res.stdout
    assert "stage 0: no local/setup.sh in this recipe; nothing to do" in res.stdout
    assert "stage 1" not in res.stdout
    # Skipped stages do not run (stage 1 would fail: no sets, no local/data.sh).
    for args in (["--skip_stages", "1"], ["--skip_data_prep", "true"]):
        res = run_script(recipe_dir, "./blspkd.sh", "--stage", "1", "--stop_stage", "1", *args)
        assert res.returncode == 0, res.stdout
        assert "skipping stage 1" in res.stdout
    res = run_script(recipe_dir, "./blspkd.sh", "--stage", "1", "--stop_stage", "1")
    assert res.returncode == 1
    assert "stage 1 needs the data sets: give --train_set/--valid_set/--test_sets" in res.stdout
    # Every invocation is logged with its exact arguments.
    log = (recipe_dir / "exp" / "cmd.log").read_text()
    assert "./blspkd.sh --stage 1 --stop_stage 1 --skip_stages 1" in log


def test_every_option_is_used_and_its_example_parses(recipe_dir):
    """An option the help documents is read by the script, and the training overrides it shows are valid keys."""
    from blspkd.train.config import TrainConfig
    from blspkd.utils.config import parse_config

    script = (TEMPLATE / "blspkd.sh").read_text()
    body = "\n".join(ln for ln in script.split("# <<< options", 1)[1].splitlines() if not ln.lstrip().startswith("#"))
    unused = [name for name in declared_options() if not re.search(rf"(?<![-\w]){name}\b", body)]
    assert unused == []
    res = run_script(recipe_dir, "./blspkd.sh", "--help")
    for option in ("pretrain_args", "finetune_args"):
        example = re.search(rf'^  --{option} .*e\.g\. "([^"]+)"', res.stdout, flags=re.M)
        if example:
            parse_config(TrainConfig, example.group(1).split())  # raises ConfigError on an unknown key


def _data_sh(recipe: Path, body: str) -> None:
    """A local/data.sh that counts its runs in data.sh.runs and then runs ``body``."""
    (recipe / "local").mkdir(exist_ok=True)
    script = recipe / "local" / "data.sh"
    script.write_text("#!/usr/bin/env bash\nset -euo pipefail\necho run >> data.sh.runs\n" + body)
    script.chmod(script.stat().st_mode | stat.S_IXUSR)


def _runs(recipe: Path) -> int:
    return len((recipe / "data.sh.runs").read_text().splitlines())


@pytest.fixture(scope="module")
def tiny_corpus(tmp_path_factory) -> Path:
    """Speech for data dirs: 4 utterances of 2 speakers, plus one of 0.05 s (under the default --min_duration)."""
    root = tmp_path_factory.mktemp("tiny_corpus")
    build_speech_dir(root, default_utts(4, 2))
    import soundfile

    soundfile.write(root / "wav" / "spk1-short.wav", np.zeros(800, dtype=np.int16), 16000, subtype="PCM_16")
    return root


def _copy_sets(tiny_corpus: Path, data: Path, sets: list[str]) -> None:
    src = tiny_corpus / "data"
    for s in sets:
        wav, text, utt2spk = (read_kv(src / n) for n in ("wav.scp", "text", "utt2spk"))
        wav["spk1-short"] = str(tiny_corpus / "wav" / "spk1-short.wav")
        text["spk1-short"] = "SHORT"
        utt2spk["spk1-short"] = "spk1"
        write_data_dir(data / s, wav, text, utt2spk)


def test_stage1_markers_rerun_script_and_force(recipe_dir, tiny_corpus, tmp_path):
    # data.sh copies prepared sets in; stage 1 validates them afterwards.
    _copy_sets(tiny_corpus, tmp_path / "prepared", ["train", "dev"])
    _data_sh(recipe_dir, f"mkdir -p data && cp -r {tmp_path / 'prepared'}/. data/\n")
    args = ["./blspkd.sh", "--stage", "1", "--stop_stage", "1", "--train_set", "train", "--valid_set", "dev"]
    res = run_script(recipe_dir, *args)
    assert res.returncode == 0, res.stdout
    assert "stage 1: data/train: 5 utterances, valid" in res.stdout
    assert (recipe_dir / "data" / ".completed.stage1").is_file()
    res = run_script(recipe_dir, *args)
    assert "data already prepared with the same options" in res.stdout and _runs(recipe_dir) == 1
    # The re-run script repeats exactly stage 1 with the same options; --force true redoes it.
    rerun = recipe_dir / "data" / "run_stage1.sh"
    assert os.access(rerun, os.X_OK)
    assert "--train_set train --valid_set dev --stage 1 --stop_stage 1" in rerun.read_text()
    res = run_script(REPO, str(rerun), "--force", "true")
    assert res.returncode == 0, res.stdout
    assert _runs(recipe_dir) == 2
    # Other data.sh options invalidate the marker.
    res = run_script(recipe_dir, *args, "--local_data_opts", "")
    assert _runs(recipe_dir) == 2
    (recipe_dir / "local" / "data.sh").write_text((recipe_dir / "local" / "data.sh").read_text() + "# changed\n")
    res = run_script(recipe_dir, *args)
    assert res.returncode == 0 and _runs(recipe_dir) == 3


def test_stage1_rejects_invalid_and_missing_sets(recipe_dir, tiny_corpus):
    _data_sh(recipe_dir, "")
    _copy_sets(tiny_corpus, recipe_dir / "data", ["train"])
    text = recipe_dir / "data" / "train" / "text"
    lines = text.read_text().splitlines()
    text.write_text("\n".join([lines[1], lines[0], *lines[2:]]) + "\n")  # unsorted
    res = run_script(recipe_dir, "./blspkd.sh", "--stage", "1", "--stop_stage", "1", "--train_set", "train")
    assert res.returncode != 0
    assert "data/train/text:2" in res.stdout and "sort" in res.stdout
    assert not (recipe_dir / "data" / ".completed.stage1").exists()
    write_kv(text, read_kv(text))
    res = run_script(recipe_dir, "./blspkd.sh", "--stage", "1", "--stop_stage", "1", "--train_set", "train",
                     "--valid_set", "dev")
    assert res.returncode == 1
    assert "local/data.sh did not create data/dev" in res.stdout


@pytest.mark.slow
def test_stage2_features_filter_markers(recipe_dir, tiny_corpus, tiny_whisper_dir, monkeypatch):
    monkeypatch.chdir(recipe_dir)  # feats.scp names arks relative to the recipe dir, as in Kaldi/ESPnet
    _copy_sets(tiny_corpus, recipe_dir / "data", ["train", "test"])
    args = ["./blspkd.sh", "--stage", "2", "--stop_stage", "2", "--train_set", "train", "--test_sets", "test",
            "--nj", "2", "--speech_encoder", str(tiny_whisper_dir)]
    res = run_script(recipe_dir, *args)
    assert res.returncode == 0, res.stdout
    wavs = read_kv(recipe_dir / "data" / "train" / "wav.scp")
    for dset, kept in (("train", 4), ("test", 5)):  # the 0.05 s utterance is dropped from training data only
        dump = recipe_dir / "dump" / dset
        assert (dump / ".completed").is_file()
        feats = load_scp(dump / "feats.scp")
        frames = read_kv(dump / "utt2num_frames")
        assert len(feats) == kept and sorted(frames) == sorted(read_kv(dump / "text"))
        for utt, mat in feats.items():
            import soundfile

            seconds = soundfile.info(wavs[utt]).duration
            assert mat.dtype == np.float32 and mat.shape[1] == 80
            assert mat.shape[0] == int(frames[utt]) and abs(mat.shape[0] - seconds * 100) <= 1
        assert sorted(read_kv(dump / "utt2spk")) == sorted(feats)
        assert list((dump / "log").glob("extract.*.log"))
    assert "spk1-short" not in load_scp(recipe_dir / "dump" / "train" / "feats.scp")
    res = run_script(recipe_dir, *args)
    assert res.returncode == 0 and res.stdout.count("already complete with the same options; skipping") == 2
    # After a killed run (shard 2 and the merge missing), stage 2 again redoes only the missing shard.
    for marker in (".completed.stage2", ".completed", "shards/.completed.2"):
        (recipe_dir / "dump" / "train" / marker).unlink()
    res = run_script(recipe_dir, *args)
    assert res.returncode == 0, res.stdout
    assert "already done" in (recipe_dir / "dump" / "train" / "log" / "extract.1.log").read_text()
    assert "already done" not in (recipe_dir / "dump" / "train" / "log" / "extract.2.log").read_text()
    assert len(load_scp(recipe_dir / "dump" / "train" / "feats.scp")) == 4
    # Changed options redo only the affected set.
    assert "--stage 2 --stop_stage 2" in (recipe_dir / "dump" / "run_stage2.sh").read_text()
    res = run_script(recipe_dir, *args, "--min_duration", "0.01")
    assert res.returncode == 0, res.stdout
    assert "removing dump/train (written with other options, or --force)" in res.stdout
    assert "dump/test already complete" in res.stdout
    assert len(load_scp(recipe_dir / "dump" / "train" / "feats.scp")) == 5


def test_stage2_needs_a_feature_extractor(recipe_dir, tmp_path):
    res = run_script(recipe_dir, "./blspkd.sh", "--stage", "2", "--stop_stage", "2", "--train_set", "train",
                     "--speech_encoder", str(tmp_path))
    assert res.returncode == 1
    assert f"{tmp_path}/preprocessor_config.json not found" in res.stdout


def test_stage2_encoder_cache_for_training_sets_only(recipe_dir, tiny_corpus, tiny_whisper_dir, monkeypatch):
    monkeypatch.chdir(recipe_dir)
    _copy_sets(tiny_corpus, recipe_dir / "data", ["train", "test"])
    args = ["./blspkd.sh", "--stage", "2", "--stop_stage", "2", "--train_set", "train", "--test_sets", "test",
            "--nj", "1", "--speech_encoder", str(tiny_whisper_dir), "--encoder_cache", "true"]
    res = run_script(recipe_dir, *args)
    assert res.returncode == 0, res.stdout
    info = json.loads((recipe_dir / "dump" / "train" / "encoder_out.json").read_text())
    assert info["num_utts"] == len(read_kv(recipe_dir / "dump" / "train" / "utt2num_frames")) and info["dim"] == 32
    assert not (recipe_dir / "dump" / "test" / "encoder_out.json").exists()  # decoding reads the log-mel
    res = run_script(recipe_dir, *args)
    assert res.returncode == 0 and "already complete; skipping" in (
        recipe_dir / "dump" / "train" / "log" / "encoder_out.log").read_text()

