"""Fuzzing every entry point of blspkd/bin/ with malformed inputs (hypothesis): no hang, no traceback, no half-written
file.

For each entry point a valid input is built once (a data dir, a dump dir, audio, a config, a model dir); each example
replaces one of its files with a mutation of it: random bytes, a truncation, another encoding, huge or non-finite
numbers, an inserted character (invisible ones included), an empty file. The entry point's ``main`` runs in-process
under a time limit and must return 0 (the input happened to be usable), 1 (a data error) or 2 (a usage/config error),
print ``<prog>: error: ...`` and no traceback when it fails, and leave no temporary file behind. Examples are
derandomized (the same every run) and bounded so that the whole module takes a few minutes on 2 cores.
"""
from __future__ import annotations

import contextlib
import importlib
import io
import re
import shutil
import signal
import tempfile
from pathlib import Path

import numpy as np
import pytest
import soundfile as sf
from fixtures.hostile import good_dump_dir, tone, wav_bytes
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from blspkd.data.kaldi_dir import write_data_dir, write_kv

REPO = Path(__file__).resolve().parents[1]
BIN = REPO / "blspkd" / "bin"
TIME_LIMIT_S = 60  # per example: a hang is an error, not a slow test
CHEAP = settings(max_examples=60, deadline=None, derandomize=True, database=None,
                 suppress_health_check=list(HealthCheck))
COSTLY = settings(CHEAP, max_examples=20)  # entry points that may load a (tiny) model when the input is usable


class Hang(BaseException):
    """Raised by the alarm: a BaseException, so that no ``except Exception`` of the code under test swallows it."""


# ------------------------------------------------------------------------------------------ mutations
def _numbers_replaced(base: bytes, value: bytes) -> bytes:
    return re.sub(rb"(?<![\w.])\d+(\.\d+)?(?![\w.])", value, base)


KINDS = ("bytes", "truncate", "encoding", "huge", "insert", "empty", "flip", "duplicate")
# Model files get the mutations that break them as files (their values are the model configs' to validate).
BREAKING = ("bytes", "truncate", "empty")
FILE_KINDS = dict.fromkeys(("model/config.json", "model/model.safetensors", "fe/preprocessor_config.json"), BREAKING)


@st.composite
def mutated(draw, base: bytes, kinds: tuple[str, ...] = KINDS) -> bytes:
    """One malformed variant of ``base``."""
    kind = draw(st.sampled_from(kinds))
    if kind == "bytes":
        return draw(st.binary(max_size=300))
    if kind == "truncate":
        return base[: draw(st.integers(0, max(len(base) - 1, 0)))]
    if kind == "encoding":
        text = base.decode("utf-8", "replace") + draw(st.sampled_from(["é", "ü ß", "中文", ""]))
        codec = draw(st.sampled_from(["utf-16", "latin-1", "utf-8-sig", "cp1252"]))
        return text.encode(codec, "replace")
    if kind == "huge":
        value = draw(st.sampled_from([b"9" * 40, b"1e999", b"-1", b"nan", b"0", b"-0.0", b"2147483648"]))
        return _numbers_replaced(base, value)
    if kind == "insert":
        char = draw(st.one_of(st.sampled_from(["\ufeff", "\u00a0", "\u200b", "\0", "\r", "\t", " ", "\n", "|", ":"]),
                              st.characters()))
        at = draw(st.integers(0, len(base)))
        return base[:at] + char.encode("utf-8", "surrogatepass") + base[at:]
    if kind == "empty":
        return b""
    if kind == "flip":
        if not base:
            return b"\xff"
        at = draw(st.integers(0, len(base) - 1))
        return base[:at] + bytes([base[at] ^ draw(st.integers(1, 255))]) + base[at + 1:]
    lines = base.splitlines(keepends=True) or [b"\n"]
    at = draw(st.integers(0, len(lines) - 1))
    return b"".join(lines[:at + 1] + lines[at:])  # a duplicated line


@st.composite
def spoiled(draw, root: Path, names: list[str]) -> tuple[str, bytes]:
    """(file name relative to ``root``, new content) for one of ``names``."""
    name = draw(st.sampled_from(names))
    path = root / name
    base = path.read_bytes() if path.is_file() else b""
    return name, draw(mutated(base, FILE_KINDS.get(name, KINDS)))


# ------------------------------------------------------------------------------------------ running an entry point
def run_main(module: str, argv: list[str]) -> tuple[int, str]:
    """(exit code, stdout + stderr) of ``blspkd.bin.<module>.main(argv)`` run in-process under TIME_LIMIT_S."""
    main = importlib.import_module(f"blspkd.bin.{module}").main

    def alarm(signum, frame):
        raise Hang(f"{module} {argv} ran longer than {TIME_LIMIT_S} s")

    out = io.StringIO()
    previous = signal.signal(signal.SIGALRM, alarm)
    signal.alarm(TIME_LIMIT_S)
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(out):
            try:
                rc = main(argv)
            except SystemExit as e:  # --help / --print_config
                rc = e.code if isinstance(e.code, int) else 0
    finally:
        signal.alarm(0)
        signal.signal(signal.SIGALRM, previous)
    return rc, out.getvalue()


def check_outcome(module: str, rc: int, output: str, workdir: Path) -> None:
    assert "Traceback" not in output, output[-3000:]
    assert rc in (0, 1, 2), (rc, output[-3000:])
    if rc:
        assert f"python -m blspkd.bin.{module}: error: " in output, output[-3000:]
    leftovers = [p for p in workdir.rglob("*") if p.name.endswith((".tmp", ".part")) or ".tmp." in p.name]
    assert not leftovers, leftovers


@contextlib.contextmanager
def scratch(base: Path):
    """A fresh copy of ``base`` per example (hypothesis runs many examples in one test call)."""
    d = Path(tempfile.mkdtemp(prefix="fuzz"))
    try:
        shutil.copytree(base, d / "in", symlinks=True)
        yield d
    finally:
        shutil.rmtree(d, ignore_errors=True)


def write_spoiled(root: Path, spoil: tuple[str, bytes]) -> None:
    name, content = spoil
    (root / name).parent.mkdir(parents=True, exist_ok=True)
    if (root / name).is_dir():
        shutil.rmtree(root / name)
    (root / name).write_bytes(content)


# ------------------------------------------------------------------------------------------ valid inputs
@pytest.fixture(scope="module")
def inputs(tmp_path_factory, tiny_whisper_dir, tiny_llm_dir, tiny_model_dir) -> Path:
    """One directory holding a valid input for every entry point (copied per example before it is spoiled)."""
    from transformers import WhisperFeatureExtractor

    root = tmp_path_factory.mktemp("fuzz_inputs")
    # a data dir with real (short) audio, segments on one recording
    wav = root / "audio"
    wav.mkdir()
    (wav / "a.wav").write_bytes(wav_bytes(tone(0.6)))
    (wav / "b.wav").write_bytes(wav_bytes(tone(0.4)))
    sf.write(wav / "c.flac", tone(0.5), 16000, format="FLAC")
    utts = {"spk1-a": "a.wav", "spk1-b": "b.wav", "spk2-c": "c.flac"}
    write_data_dir(root / "data", {u: u.split("-")[0] for u in utts}, **{"wav.scp": {u: f"in/audio/{f}" for u, f in
                                                                                    utts.items()}},
                   text={u: f"words of {u}" for u in utts})
    write_kv(root / "data" / "utt2dur", {"spk1-a": "0.6", "spk1-b": "0.4", "spk2-c": "0.5"})
    write_data_dir(root / "data2", {"spk3-d": "spk3"}, **{"wav.scp": {"spk3-d": "in/audio/b.wav"}},
                   text={"spk3-d": "more words"})
    write_kv(root / "data2" / "utt2dur", {"spk3-d": "0.4"})
    seg = root / "segdata"
    write_data_dir(seg, {"spk1-s1": "spk1", "spk1-s2": "spk1"}, **{"wav.scp": {"rec": "in/audio/a.wav"}},
                   text={"spk1-s1": "first", "spk1-s2": "second"})
    write_kv(seg / "segments", {"spk1-s1": "rec 0.0 0.3", "spk1-s2": "rec 0.3 0.6"})
    WhisperFeatureExtractor(feature_size=80).save_pretrained(str(root / "fe"))
    dump = good_dump_dir(root / "dump", n_mels=80)
    write_kv(dump / "continuation", {k: "and so on" for k in ("spk1-u0", "spk1-u1", "spk1-u2")})
    (root / "lists").mkdir()
    (root / "lists" / "utts").write_text("spk1-a\nspk2-c\n")
    (root / "lists" / "task").write_text("translation")  # the task name bin/tasks is asked about
    (root / "score").mkdir()
    (root / "score" / "ref").write_text("u1 the cat sat\nu2 a dog\n")
    (root / "score" / "hyp").write_text("u1 the cat sat\nu2 a frog\n")
    (root / "conf").mkdir()
    (root / "conf" / "train.yaml").write_text(
        "model:\n  adapter: {num_pre_cif_layers: 1, num_post_cif_layers: 1, num_heads: 4}\n"
        "  losses: {input_kl: 1.0, cif: 1.0}\n"
        f"  speech_encoder: {tiny_whisper_dir}\n  llm: {tiny_llm_dir}\n"
        "data:\n  train: [{path: in/dump, weight: 1.0}]\n  batch_bins: 400\n  num_workers: 0\n"
        "  num_sample_generations: 0\n"
        "optim: {lr: 0.001, warmup_steps: 1}\nmax_steps: 1\nlog_interval: 1\nsave_interval: 1\n"
        "valid_interval: 10\ntensorboard: false\n")
    (root / "conf" / "decode.yaml").write_text("max_new_tokens: 2\nbatch_size: 2\nnum_beams: 1\n")
    (root / "conf" / "teacher.yaml").write_text("task: tokens\nbatch_size: 2\n")
    (root / "conf" / "export.yaml").write_text("copy_base: false\n")
    (root / "conf" / "instructions.yaml").write_text('num_utts: 1\ninstructions:\n  french: "Say it in French."\n'
                                                     '  yes_no: "Is it a question?"\n')
    shutil.copytree(tiny_model_dir, root / "model")
    shutil.copytree(tiny_llm_dir, root / "llm")
    shutil.copytree(tiny_whisper_dir, root / "whisper")
    (root / "RESULTS.md").write_text("| set | WER |\n|---|---|\n| test | 12.5 |\n")
    (root / "junk_out").mkdir()
    (root / "junk_out" / "notes.txt").write_text("mine\n")
    return root


DATA_FILES = ["data/wav.scp", "data/text", "data/utt2spk", "data/spk2utt", "data/utt2dur"]
SEG_FILES = ["segdata/segments", "segdata/wav.scp", "segdata/utt2spk", "segdata/text"]
DUMP_FILES = ["dump/feats.scp", "dump/feats.ark", "dump/text", "dump/utt2num_frames", "dump/utt2spk",
              "dump/continuation"]
AUDIO_FILES = ["audio/a.wav", "audio/b.wav", "audio/c.flac"]

# entry point -> (argv builder given the example's root, the files an example may spoil, settings)
TARGETS = {
    "validate_data_dir": (lambda r: [str(r / "data")], DATA_FILES, CHEAP),
    "fix_data_dir": (lambda r: [str(r / "segdata")], SEG_FILES, CHEAP),
    "subset_data_dir": (lambda r: ["--utt_list", str(r / "lists/utts"), str(r / "data"), str(r / "sub")],
                        DATA_FILES + ["lists/utts"], CHEAP),
    "combine_data": (lambda r: [str(r / "all"), str(r / "data"), str(r / "data2")],
                     DATA_FILES + ["data2/wav.scp", "data2/utt2spk", "data2/text"], CHEAP),
    "split_data": (lambda r: [str(r / "data"), "2"], DATA_FILES, CHEAP),
    "utt2spk_to_spk2utt": (lambda r: [str(r / "data/utt2spk")], ["data/utt2spk"], CHEAP),
    "extract_feats": (lambda r: ["--data_dir", str(r / "data"), "--out_dir", str(r / "out"), "--feature_extractor",
                                 str(r / "fe"), "--num_shards", "1", "--shard", "1"],
                      DATA_FILES + AUDIO_FILES + ["fe/preprocessor_config.json"], CHEAP),
    "score": (lambda r: ["--ref", str(r / "score/ref"), "--hyp", str(r / "score/hyp"), "--out_dir", str(r / "res")],
              ["score/ref", "score/hyp"], CHEAP),
    "train": (lambda r: ["--config", str(r / "conf/train.yaml"), "--exp_dir", str(r / "exp")],
              ["conf/train.yaml"] + DUMP_FILES, COSTLY),
    "decode": (lambda r: ["--config", str(r / "conf/decode.yaml"), "--model_dir", str(r / "model"), "--dump_dir",
                          str(r / "dump"), "--out_dir", str(r / "dec")],
               ["conf/decode.yaml", "model/config.json"] + DUMP_FILES, COSTLY),
    "make_teacher_data": (lambda r: ["--config", str(r / "conf/teacher.yaml"), "--dump_dir", str(r / "dump"),
                                     "--llm", str(r / "llm")], ["conf/teacher.yaml", "dump/text"], COSTLY),
    "export": (lambda r: ["--config", str(r / "conf/export.yaml"), "--model_dir", str(r / "model"), "--out_dir",
                          str(r / "exported"), "--results_md", str(r / "RESULTS.md")],
               ["conf/export.yaml", "model/config.json", "RESULTS.md"], COSTLY),
    "infer": (lambda r: ["--model", str(r / "model"), "--audio", str(r / "audio/a.wav"), "--max_new_tokens", "2",
                         "--no_stream"], ["audio/a.wav", "model/config.json"], COSTLY),
    "serve": (lambda r: ["--model", str(r / "model"), "--port", "1"],  # every spoiled model is refused: no server
              ["model/config.json", "model/model.safetensors"], CHEAP),
    "tasks": (lambda r: ["reference", r.joinpath("lists/task").read_text(encoding="utf-8", errors="replace")],
              ["lists/task"], CHEAP),
    "dump_encoder_outputs": (lambda r: ["--dump_dir", str(r / "dump"), "--speech_encoder", str(r / "whisper")],
                             DUMP_FILES, COSTLY),
    "make_instruction_sets": (lambda r: ["--config", str(r / "conf/instructions.yaml"), "--dump_dir", str(r / "dump")],
                              ["conf/instructions.yaml"] + DUMP_FILES, CHEAP),
    "prepare_pretrained": (lambda r: ["--whisper_out", str(r / "junk_out")], ["junk_out/notes.txt",
                                                                             "junk_out/config.json"], CHEAP),
}


def test_every_entry_point_is_fuzzed():
    entry_points = {p.stem for p in BIN.glob("*.py") if not p.stem.startswith("_")}
    assert entry_points == set(TARGETS)


@pytest.mark.slow
@pytest.mark.parametrize("module", sorted(TARGETS))
def test_malformed_inputs_get_a_clean_error(module, inputs):
    argv_of, files, config = TARGETS[module]
    @config
    @given(data=st.data())
    def example(data):
        with scratch(inputs) as work:
            root = work / "in"
            spoil = data.draw(spoiled(root, files))
            write_spoiled(root, spoil)
            with contextlib.chdir(work):  # the inputs' relative paths (wav.scp, the train config) start here
                rc, output = run_main(module, argv_of(root))
            check_outcome(module, rc, output, work)

    example()


@pytest.mark.parametrize("module", sorted(TARGETS))
def test_valid_inputs_succeed(module, inputs):
    """The fuzzed inputs start valid: each entry point accepts them unspoiled (else the fuzz tests only errors)."""
    if module in ("prepare_pretrained", "serve"):
        pytest.skip("its valid run is a full model conversion (test_convert.py) / a server (test_serve.py)")
    argv_of, _, _ = TARGETS[module]
    with scratch(inputs) as work, contextlib.chdir(work):
        rc, output = run_main(module, argv_of(work / "in"))
    assert rc == 0, output[-3000:]
    check_outcome(module, rc, output, work)


def test_numbers_are_replaced_as_whole_tokens():
    assert _numbers_replaced(b"u1 12 x2 3.5\n", b"N") == b"u1 N x2 N\n"
    assert np.isinf(float(_numbers_replaced(b"7", b"1e999")))
