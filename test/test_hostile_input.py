"""The hostile-input defect corpus (test/fixtures/hostile.py): every class of bad input gets the exact outcome the
README's "What bad input gets" promises: an error naming the file and line, or a counted skip (utterances in and out),
and never code run from the data, a hang, a traceback or a silent loss."""
from __future__ import annotations

from pathlib import Path

import pytest
from fixtures.hostile import append_record, foreign_records, good_dump_dir

from blspkd.data.feats_io import load_scp
from blspkd.data.kaldi_dir import DataDirError

REPO = Path(__file__).resolve().parents[1]


# ------------------------------------------------------------------------------------------ feature records
@pytest.mark.parametrize("kind", ["pickle", "npy", "double", "compressed", "ascii", "vector", "truncated", "huge",
                                  "nan", "inf"])
def test_only_finite_float32_matrices_are_read(tmp_path, kind):
    marker = tmp_path / "PWNED"
    dump = good_dump_dir(tmp_path / "dump")
    line = append_record(dump, "spk1-u1", foreign_records(marker)[kind])
    feats = load_scp(dump / "feats.scp")
    assert feats["spk1-u0"].shape == (10, 8)  # the other records still read
    with pytest.raises(DataDirError) as e:
        feats["spk1-u1"]
    msg = str(e.value)
    assert msg.startswith(f"{dump}/feats.scp:{line}: utterance 'spk1-u1': ") and "Fix: re-run stage 2" in msg
    expected = {
        "pickle": "a pickled Python object (kaldiio 'PKL' record; never unpickled: it could run code)",
        "npy": "a NumPy array record, not a float32 matrix", "double": "kind 'DM', not a float32 matrix ('FM')",
        "compressed": "kind 'CM', not a float32 matrix ('FM')", "ascii": "ASCII matrices are not read",
        "vector": "kind 'FV', not a float32 matrix ('FM')", "truncated": "claims 4 x 8 values but the ark holds 121",
        "huge": "claims 1073741824 x 1073741824 values", "nan": "4 of 32 feature values are not finite (NaN/inf)",
        "inf": "32 of 32 feature values are not finite (NaN/inf)",
    }[kind]
    assert expected in msg
    assert not marker.exists()


def test_a_planted_pickle_never_runs_in_training_or_decoding_data(tmp_path):
    from blspkd.train.config import TaskConfig
    from blspkd.train.dataset import TrainingData

    marker = tmp_path / "PWNED"
    dump = good_dump_dir(tmp_path / "dump")
    append_record(dump, "spk1-u2", foreign_records(marker)["pickle"])
    data = TrainingData([dump], [TaskConfig()])
    with pytest.raises(DataDirError, match=r"feats.scp:3: utterance 'spk1-u2': the record .* is a pickled Python"):
        data[(0, "spk1-u2", 0)]
    assert not marker.exists()


@pytest.mark.parametrize("value, why", [
    ("touch {marker} |", "is a shell command; feature locations must be '<ark path>:<byte offset>' (commands are "
                         "never run)"),
    ("| touch {marker}", "is a shell command"),
    ("{ark}:3[0:2]", "is not '<ark path>:<byte offset>'"),
    ("{ark}", "is not '<ark path>:<byte offset>'"),
    ("{ark}:-5", "is not '<ark path>:<byte offset>'"),
])
def test_feature_locations_that_are_not_ark_offsets_are_refused_before_reading(tmp_path, value, why):
    marker = tmp_path / "PWNED"
    dump = good_dump_dir(tmp_path / "dump")
    lines = (dump / "feats.scp").read_text().splitlines()
    lines[1] = "spk1-u1 " + value.format(marker=marker, ark=dump / "feats.ark")
    (dump / "feats.scp").write_text("\n".join(lines) + "\n")
    with pytest.raises(DataDirError) as e:
        load_scp(dump / "feats.scp")
    assert str(e.value).startswith(f"{dump}/feats.scp:2: location ") and why in str(e.value)
    assert not marker.exists()


# ------------------------------------------------------------------------------------------ audio
@pytest.fixture(scope="module")
def fe_dir(tmp_path_factory) -> Path:
    from transformers import WhisperFeatureExtractor

    d = tmp_path_factory.mktemp("fe")
    WhisperFeatureExtractor(feature_size=80).save_pretrained(str(d))
    return d


@pytest.mark.parametrize("name, message", [
    ("trunc", r"file {w}/trunc.wav is truncated: its header declares 16000 samples \(1.000 s\) but it holds 7989 "
              r"\(0.499 s\)"),
    ("tpipe", r"output of command 'head -c 20000 {w}/good1.wav' is truncated: its header declares 16000 samples "
              r"\(1.000 s\) but it holds 9978"),
    ("tflac", r"file {w}/tflac.flac is truncated or corrupt: decoding failed after \d+ samples"),
    ("nan", r"file {w}/nan.wav holds 2 non-finite sample\(s\) \(NaN/inf\), the first at 0.006 s"),
    ("npipe", r"output of command 'cat {w}/nan.wav' holds 2 non-finite sample\(s\)"),
    ("inf", r"file {w}/inf.wav holds 16000 non-finite sample\(s\) \(NaN/inf\), the first at 0.000 s"),
    ("adir", r"a directory, not an audio file: {w}/adir"),
])
def test_every_audio_read_checks_length_and_values(tmp_path, name, message):
    from fixtures.hostile import bad_audio_corpus

    from blspkd.data.audio import AudioError, AudioReader

    data, _ = bad_audio_corpus(tmp_path)
    reader = AudioReader(data)
    line = sorted(reader.wavs).index(f"spk1-{name}") + 1
    assert reader.read("spk1-good1").shape == (16000,)
    with pytest.raises(AudioError, match=rf"^{data}/wav.scp:{line}: recording 'spk1-{name}': "
                                         + message.format(w=tmp_path / "wav")):
        reader.read(f"spk1-{name}")


def test_stage2_refuses_or_counts_every_bad_recording(tmp_path, fe_dir):
    from fixtures.hostile import bad_audio_corpus

    from blspkd.data.audio import AudioError
    from blspkd.data.feature_dump import extract_shard, merge_shards

    data, reasons = bad_audio_corpus(tmp_path)
    with pytest.raises(AudioError, match=r"wav.scp:\d+: recording 'spk1-adir': a directory, not an audio file"):
        extract_shard(data, tmp_path / "strict", fe_dir, 1, 1)
    assert not (tmp_path / "strict" / "shards" / ".completed.1").exists()
    out = tmp_path / "dump"
    stats = extract_shard(data, out, fe_dir, 1, 1, skip_bad_audio=True)
    expected = {}
    for reason in reasons.values():
        expected[reason] = expected.get(reason, 0) + 1
    assert (stats["utterances"], stats["kept"], stats["dropped"]) == (10, 2, expected)
    total = merge_shards(data, out, 1)
    assert (total["utterances"], total["kept"]) == (10, 2)
    assert sorted(load_scp(out / "feats.scp")) == ["spk1-good1", "spk1-good2"]
    dropped = dict(line.split(" ", 1) for line in (out / "shards" / "dropped.1").read_text().splitlines())
    assert dropped == reasons


def test_loud_audio_whose_features_overflow_is_an_error_naming_the_line(tmp_path, fe_dir):
    from fixtures.hostile import bad_audio_corpus

    from blspkd.data.audio import NonFiniteAudio
    from blspkd.data.feature_dump import extract_shard
    from blspkd.data.kaldi_dir import write_kv

    data, _ = bad_audio_corpus(tmp_path)
    keep = {"spk1-good1", "spk1-loud"}
    for name in ("wav.scp", "text", "utt2spk"):
        table = dict(line.split(" ", 1) for line in (data / name).read_text().splitlines())
        write_kv(data / name, {k: v for k, v in table.items() if k in keep})
    write_kv(data / "spk2utt", {"spk1": "spk1-good1 spk1-loud"})
    with pytest.raises(NonFiniteAudio, match=rf"^{data}/wav.scp:2: utterance 'spk1-loud': its log-mel features are "
                                              r"not finite: the samples reach 1e\+30"):
        extract_shard(data, tmp_path / "dump", fe_dir, 1, 1)


# ------------------------------------------------------------------------------------------ ids and text
@pytest.mark.parametrize("defect", ["bom_text", "bom_utt2spk", "nbsp_key", "nbsp_separator", "zwsp", "zwj",
                                    "nul_text", "esc_text"])
def test_invisible_and_control_characters_are_named_and_never_dropped(tmp_path, defect):
    from fixtures.hostile import ID_DEFECTS, id_defect_dir

    from blspkd.data.data_dir_ops import fix_data_dir
    from blspkd.data.kaldi_dir import read_kv, validate_data_dir

    d, name, line = id_defect_dir(tmp_path / "d", defect)
    expected = ID_DEFECTS[defect][2]
    problems = validate_data_dir(d)
    assert any(p.startswith(f"{d}/{name}:{line}: {expected}") for p in problems), problems
    # every other problem defers to that line instead of suggesting the fix that drops the utterance
    assert not [p for p in problems if "fix_data_dir.sh" in p and "Fix: run utils/fix_data_dir.sh" in p]
    with pytest.raises(DataDirError, match=rf"^{d}/{name}:{line}: "):
        read_kv(d / name)
    before = {p.name: p.read_bytes() for p in d.iterdir()}
    with pytest.raises(DataDirError) as e:
        fix_data_dir(d)
    assert str(e.value).startswith(f"{d}/{name}:{line}: {expected}")
    assert "fix_data_dir does not drop utterances for this" in str(e.value)
    assert {p.name: p.read_bytes() for p in d.iterdir()} == before  # nothing dropped, nothing rewritten


def test_validate_cli_shows_the_invisible_character(tmp_path, capsys):
    from fixtures.hostile import id_defect_dir

    from blspkd.bin import validate_data_dir

    d, _, _ = id_defect_dir(tmp_path / "d", "bom_utt2spk")
    assert validate_data_dir.main([str(d)]) == 1
    err = capsys.readouterr().err
    assert "Traceback" not in err and err.endswith(f"python -m blspkd.bin.validate_data_dir: error: {d}: 4 problem(s) "
                                                   "found\n")
    assert (f"{d}/utt2spk:1: invisible character in key '\\ufeffspk1-u1': U+FEFF ZERO WIDTH NO-BREAK SPACE (a UTF-8 "
            f"byte order mark) at character 1. Fix: remove the byte order mark (sed -i 's/\\xEF\\xBB\\xBF//g' "
            f"{d}/utt2spk)") in err


@pytest.mark.parametrize("utt2spk, line, expected", [
    ({"spk1-u1": "spk1", "u2": "spk1"}, 2, "speaker id 'spk1' is not a prefix of utterance id 'u2'"),
    ({"a-u1": "spkA", "a-u2": "spkA"}, 1, "speaker id 'spkA' is not a prefix of utterance id 'a-u1'"),
    ({"spk1-u1": "spk1-u1x"}, 1, "speaker id 'spk1-u1x' is not a prefix of utterance id 'spk1-u1'"),
    ({"spk10_b": "spk10", "spk1_a": "spk1"}, 2, "speaker ids are not sorted along the sorted utterances: 'spk1' "
                                                "comes after 'spk10'"),
])
def test_speaker_ids_must_prefix_their_utterance_ids(tmp_path, utt2spk, line, expected):
    from blspkd.data.kaldi_dir import validate_data_dir, write_data_dir

    d = write_data_dir(tmp_path / "d", utt2spk, **{"wav.scp": {u: "/a.wav" for u in utt2spk}},
                       text={u: "HI" for u in utt2spk})
    problems = validate_data_dir(d)
    assert [p for p in problems if p.startswith(f"{d}/utt2spk:{line}: {expected}")], problems


def test_a_directory_where_a_file_belongs_is_named_a_directory(tmp_path):
    from blspkd.data.kaldi_dir import read_kv

    (tmp_path / "text").mkdir()
    with pytest.raises(DataDirError, match=rf"^{tmp_path}/text: a directory, not a file$"):
        read_kv(tmp_path / "text")


# ------------------------------------------------------------------------------------------ training configs
TINY = REPO / "egs/mini_espeak/conf/tiny/pretrain.yaml"


@pytest.fixture
def train_argv(tmp_path, tiny_whisper_dir, tiny_llm_dir):
    dump = good_dump_dir(tmp_path / "dump", n_mels=80)

    def argv(*extra):
        return ["--config", str(TINY), "--exp_dir", str(tmp_path / "exp"), "--data.train", f"[{{path: {dump}}}]",
                "--model.speech_encoder", str(tiny_whisper_dir), "--model.llm", str(tiny_llm_dir), *extra]

    return argv


@pytest.mark.parametrize("extra, expected", [
    (("--save_interval", "0"), "save_interval must be >= 1, got 0"),
    (("--log_interval", "0"), "log_interval must be >= 1, got 0"),
    (("--valid_interval", "-1"), "valid_interval must be >= 1, got -1"),
    (("--max_steps", "0"), "max_steps must be >= 1, got 0 (leave it out for no limit)"),
    (("--max_steps", "null", "--num_epochs", "0"), "num_epochs must be >= 1, got 0"),
    (("--optim.grad_accum", "0"), "optim.grad_accum must be >= 1, got 0"),
    (("--data.batch_bins", "0"), "data.batch_bins must be >= 1, got 0"),
    (("--data.train", "[{path: /nope/dump}]"), "data.train[0].path: dump dir '/nope/dump' not found"),
    (("--data.train", "[{path: /tmp, weight: -1}]"), "data.train[0].weight must be a number >= 0, got -1.0"),
    (("--model.llm", "/nope/llm"), "model.llm: model directory '/nope/llm' not found"),
    (("--model.llm", "nope/llm"), "model.llm: model directory 'nope/llm' not found"),  # no hub: HF_HUB_OFFLINE
    (("--model.adapter", "{num_heads: 4, bogus: 1}"), "unknown key 'model.adapter.bogus'"),
    (("--model.losses", "{input_kl: 1.0, input_kll: 1.0}"), "unknown key 'input_kll' (did you mean 'input_kl'?)"),
    (("--init_from", "/nope/model"), "init_from: /nope/model/config.json not found (give a model dir written by "
                                     "save_pretrained"),
])
def test_training_configs_that_cannot_work_are_refused_before_anything_is_built(train_argv, tmp_path, capsys, extra,
                                                                                 expected):
    from blspkd.bin import train

    assert train.main(train_argv(*extra)) == 2
    err = capsys.readouterr().err
    assert "python -m blspkd.bin.train: error: " in err and expected in err, err
    assert "Traceback" not in err and not (tmp_path / "exp").exists()


def test_a_speech_encoder_that_is_an_llm_is_named(train_argv, tiny_llm_dir, tmp_path, capsys):
    from blspkd.bin import train

    assert train.main(train_argv("--model.speech_encoder", str(tiny_llm_dir))) == 2
    err = capsys.readouterr().err
    assert (f"model.speech_encoder: '{tiny_llm_dir}' holds a 'llama' model (config.json model_type), not Whisper. "
            "Fix: give a Whisper model directory") in err
    assert "Traceback" not in err and not (tmp_path / "exp").exists()


@pytest.mark.parametrize("weight, draws", [(0.0, 0), (0.1, 0)])
def test_a_mix_that_yields_no_batch_is_refused_instead_of_spinning(train_argv, tmp_path, capsys, weight, draws):
    from blspkd.bin import train

    dump = tmp_path / "dump"
    argv = train_argv("--data.train", f"[{{path: {dump}, weight: {weight}}}]")
    assert train.main(argv) == 2  # returns at once: no epoch loop, no model
    err = capsys.readouterr().err
    assert (f"data: epoch 1 has 0 batch(es) for 1 rank(s), so training would never advance. Examples drawn per epoch "
            f"(weight -> examples of utterances): data.train[0] ({dump}) weight {weight:g} -> {draws} of 3") in err
    assert not (tmp_path / "exp").exists()


def test_the_sampler_refuses_an_empty_plan_for_any_rank_count():
    from blspkd.train.sampler import BucketBatchSampler
    from blspkd.utils.config import ConfigError

    lengths = [{"a": 5, "b": 6}, {"c": 7}]
    eligible = [{"a": [0], "b": [0]}, {"c": [0]}]
    for weights in ([0.0, 0.0], [0.2, 0.4]):
        s = BucketBatchSampler(lengths, weights, eligible, [1.0], 100, 4, seed=0)
        with pytest.raises(ConfigError, match=r"epoch 1 has 0 batch\(es\) for 1 rank\(s\)"):
            list(s)
    two_ranks = BucketBatchSampler(lengths, [1.0, 1.0], eligible, [1.0], 100, 4, seed=0, world_size=2)
    with pytest.raises(ConfigError, match=r"epoch 1 has 1 batch\(es\) for 2 rank\(s\)"):
        len(two_ranks)
    assert len(BucketBatchSampler(lengths, [1.0, 0.0], eligible, [1.0], 100, 4, seed=0)) == 1


# ------------------------------------------------------------------------------------------ infer and decode
@pytest.mark.parametrize("name, message", [
    ("nan", "file {w}/nan.wav holds 2 non-finite sample(s) (NaN/inf), the first at 0.006 s"),
    ("trunc", "file {w}/trunc.wav is truncated: its header declares 16000 samples (1.000 s) but it holds 7989"),
    ("adir", "cannot read audio file {w}/adir: a directory, not an audio file"),
    ("loud", "its log-mel features are not finite: the samples reach 1e+30"),
])
def test_infer_refuses_bad_audio_before_loading_the_model(tiny_model_dir, tmp_path, capsys, name, message):
    from fixtures.hostile import bad_audio_corpus

    from blspkd.bin import infer

    bad_audio_corpus(tmp_path)
    audio = tmp_path / "wav" / (f"{name}.wav" if name != "adir" else "adir")
    assert infer.main(["--model", str(tiny_model_dir), "--audio", str(audio)]) == 1
    err = capsys.readouterr().err
    assert err.startswith("python -m blspkd.bin.infer: error: ") and message.format(w=tmp_path / "wav") in err, err
    assert "ffmpeg" not in err  # a truncated or NaN file is not handed to ffmpeg, which would read it short


def test_decode_refuses_non_finite_features_naming_the_line(tiny_model_dir, tmp_path, capsys):
    from blspkd.bin import decode

    dump = good_dump_dir(tmp_path / "dump", n_mels=80)
    line = append_record(dump, "spk1-u1", foreign_records(tmp_path / "x")["nan"])
    rc = decode.main(["--model_dir", str(tiny_model_dir), "--dump_dir", str(dump), "--out_dir", str(tmp_path / "d"),
                      "--max_new_tokens", "2"])
    err = capsys.readouterr().err
    assert rc == 1 and "Traceback" not in err
    assert (f"python -m blspkd.bin.decode: error: {dump}/feats.scp:{line}: utterance 'spk1-u1': 4 of 32 feature "
            "values are not finite (NaN/inf)") in err
    assert not (tmp_path / "d" / "hyp.txt").exists()
