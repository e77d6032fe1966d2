"""Kaldi data-dir tools: read/write, validation (one case per defect, exact messages), fix, subset, combine, split."""
from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

from blspkd.data.data_dir_ops import (
    combine_data,
    fix_data_dir,
    split_data_dir,
    split_utterances,
    subset_data_dir,
)
from blspkd.data.kaldi_dir import DataDirError, read_kv, validate_data_dir, write_kv

REPO = Path(__file__).resolve().parents[1]
BASE = {
    "wav.scp": "spkA-u1 /audio/spkA-u1.wav\nspkA-u2 /audio/spkA-u2.wav\nspkB-u3 sox /audio/spkB-u3.flac -t wav - |\n"
    "spkB-u4 /audio/spkB-u4.wav\n",
    "text": "spkA-u1 HELLO WORLD\nspkA-u2 GOOD MORNING\nspkB-u3 SEE YOU\nspkB-u4 THANK YOU\n",
    "utt2spk": "spkA-u1 spkA\nspkA-u2 spkA\nspkB-u3 spkB\nspkB-u4 spkB\n",
    "spk2utt": "spkA spkA-u1 spkA-u2\nspkB spkB-u3 spkB-u4\n",
}


def make_dir(path: Path, **files) -> Path:
    """BASE with files replaced (str or bytes) or removed (None); ``wav_scp`` stands for ``wav.scp``."""
    path.mkdir(parents=True, exist_ok=True)
    for name, content in {**BASE, **{k.replace("_scp", ".scp"): v for k, v in files.items()}}.items():
        if content is not None:
            (path / name).write_bytes(content if isinstance(content, bytes) else content.encode())
    return path


def test_write_kv_sorts_like_lc_all_c_and_round_trips(tmp_path):
    data = {"ab": "4", "a_b": "3", "aB": "2", "a-b": "1", "é": "6", "z": "5", "b": "x y  z"}
    write_kv(tmp_path / "f", data)
    lines = (tmp_path / "f").read_text(encoding="utf-8").splitlines()
    ref = subprocess.run(["sort"], input="\n".join(f"{k} {v}" for k, v in data.items()) + "\n", text=True,
                         capture_output=True, env={**os.environ, "LC_ALL": "C"}, check=True).stdout.splitlines()
    assert lines == ref
    assert [ln.split()[0] for ln in lines] == ["a-b", "aB", "a_b", "ab", "b", "z", "é"]
    assert read_kv(tmp_path / "f") == data
    assert (tmp_path / "f").stat().st_mode & 0o777 == 0o666 & ~_umask()
    assert not [p for p in tmp_path.iterdir() if p.name != "f"]  # no temporary left behind


def _umask() -> int:
    old = os.umask(0)
    os.umask(old)
    return old


def test_read_kv_errors_name_file_and_line(tmp_path):
    (tmp_path / "text").write_bytes(b"u1 A\nu2 B\nu1 C\n\nu3 \xff\n")
    with pytest.raises(DataDirError) as e:
        read_kv(tmp_path / "text")
    assert str(e.value) == (
        f"{tmp_path}/text:4: blank line\n"
        f"{tmp_path}/text:5: not valid UTF-8 (byte 3: b'\\xff')\n"
        f"{tmp_path}/text:3: duplicate key 'u1' (first at line 1)\n"
        f"Fix: correct the file, or run utils/fix_data_dir.sh {tmp_path}"
    )
    with pytest.raises(DataDirError, match=r"nothere: file not found"):
        read_kv(tmp_path / "nothere")


def test_valid_dir_has_no_problems(tmp_path):
    assert validate_data_dir(make_dir(tmp_path / "ok")) == []


FIX = "run utils/fix_data_dir.sh {d}"
DEFECTS = {
    "unsorted": (
        {"text": "spkA-u2 GOOD MORNING\nspkA-u1 HELLO WORLD\nspkB-u3 SEE YOU\nspkB-u4 THANK YOU\n"},
        ["{d}/text:2: not sorted: key 'spkA-u1' comes after 'spkA-u2' (LC_ALL=C order). Fix: " + FIX],
    ),
    "duplicate": (
        {"utt2spk": "spkA-u1 spkA\nspkA-u2 spkA\nspkA-u2 spkA\nspkB-u3 spkB\nspkB-u4 spkB\n"},
        ["{d}/utt2spk:3: duplicate key 'spkA-u2' (first at line 2). Fix: remove one of the two lines "
         "(utils/fix_data_dir.sh {d} keeps identical duplicate lines once and drops keys whose lines disagree)"],
    ),
    "missing_key": (
        {"text": "spkA-u1 HELLO WORLD\nspkA-u2 GOOD MORNING\nspkB-u3 SEE YOU\n"},
        ["{d}/text: 1 utterance(s) of utt2spk missing: 'spkB-u4'. Fix: " + FIX],
    ),
    "extra_key": (
        {"wav_scp": BASE["wav.scp"] + "spkC-u5 /audio/spkC-u5.wav\n"},
        ["{d}/wav.scp:5: utterance 'spkC-u5' is not in utt2spk. Fix: " + FIX],
    ),
    "spk2utt": (
        {"spk2utt": "spkA spkA-u1\nspkB spkB-u3 spkB-u4\nspkC spkC-u9\n"},
        ["{d}/spk2utt:1: speaker 'spkA' lists 'spkA-u1' but utt2spk gives 'spkA-u1 spkA-u2'. "
         "Fix: utils/utt2spk_to_spk2utt.sh {d}/utt2spk > {d}/spk2utt",
         "{d}/spk2utt:3: speaker 'spkC' has no utterance in utt2spk. "
         "Fix: utils/utt2spk_to_spk2utt.sh {d}/utt2spk > {d}/spk2utt"],
    ),
    "empty_transcript": (
        {"text": "spkA-u1 HELLO WORLD\nspkA-u2\nspkB-u3 SEE YOU\nspkB-u4 THANK YOU\n"},
        ["{d}/text:2: empty transcript for utterance 'spkA-u2'. Fix: give it a transcript, or drop it with "
         "utils/fix_data_dir.sh {d}"],
    ),
    "no_final_newline": (
        {"text": BASE["text"][:-1]},
        ["{d}/text:4: last line is not newline-terminated. Fix: append a newline (echo >> {d}/text) or " + FIX],
    ),
    "not_utf8": (
        {"text": b"spkA-u1 HELLO WORLD\nspkA-u2 CAF\xe9\nspkB-u3 SEE YOU\nspkB-u4 THANK YOU\n"},
        ["{d}/text:2: not valid UTF-8 (byte 11: b'\\xe9'). Fix: re-encode the file as UTF-8 "
         "(e.g. iconv -f latin1 -t utf-8 {d}/text)",
         "{d}/text: 1 utterance(s) of utt2spk missing: 'spkA-u2'. Fix: first correct the lines with invisible or "
         "control characters or bad encoding, then validate again"],  # fix_data_dir would drop spkA-u2
    ),
    "crlf": (
        {"utt2spk": BASE["utt2spk"].replace("\n", "\r\n")},
        ["{d}/utt2spk:1: Windows line ending (\\r\\n) on 4 line(s). Fix: convert line endings "
         "(sed -i 's/\\r$//' {d}/utt2spk) or " + FIX],
    ),
    "blank_line": (
        {"text": "spkA-u1 HELLO WORLD\n\nspkA-u2 GOOD MORNING\nspkB-u3 SEE YOU\nspkB-u4 THANK YOU\n"},
        ["{d}/text:2: blank line. Fix: " + FIX],
    ),
    "missing_spk2utt": (
        {"spk2utt": None},
        ["{d}/spk2utt: required file is missing. Fix: utils/utt2spk_to_spk2utt.sh {d}/utt2spk > {d}/spk2utt"],
    ),
    "segments": (
        {"wav_scp": "rec1 /audio/rec1.wav\nrec2 /audio/rec2.wav\n",
         "segments": "spkA-u1 rec1 0.0 1.5\nspkA-u2 rec1 2.0 2.0\nspkB-u3 rec3 0.5 1.0\nspkB-u4 rec2 x 1.0\n"},
        ["{d}/segments:2: utterance 'spkA-u2': start time 2.0 is not before end time 2.0. Fix: correct the line or "
         + FIX,
         "{d}/segments:3: utterance 'spkB-u3': recording 'rec3' is not in wav.scp. Fix: add the recording to wav.scp "
         "or " + FIX,
         "{d}/segments:4: utterance 'spkB-u4': start/end times 'x' '1.0' are not numbers. Fix: correct the line or "
         + FIX],
    ),
    "numbers": (
        {"utt2num_frames": "spkA-u1 100\nspkA-u2 0\nspkB-u3 1.5\nspkB-u4 20\n"},
        ["{d}/utt2num_frames:2: value '0' for 'spkA-u2' is not a positive integer. Fix: correct the line or " + FIX,
         "{d}/utt2num_frames:3: value '1.5' for 'spkB-u3' is not a positive integer. Fix: correct the line or "
         + FIX],
    ),
}


@pytest.mark.parametrize("case", sorted(DEFECTS))
def test_each_defect_gives_its_exact_message(tmp_path, case):
    files, expected = DEFECTS[case]
    d = make_dir(tmp_path / case, **files)
    assert validate_data_dir(d) == [m.format(d=d) for m in expected]


def test_all_errors_are_collected_and_capped(tmp_path):
    files = {}
    for case in ("unsorted", "extra_key", "spk2utt", "crlf"):
        files.update(DEFECTS[case][0])
    d = make_dir(tmp_path / "many", **files)
    assert len(validate_data_dir(d)) == 5
    capped = validate_data_dir(d, max_errors=2)
    assert len(capped) == 3 and capped[2] == "... and 3 more errors"


def test_fix_data_dir_repairs_and_reports_per_reason(tmp_path):
    d = make_dir(
        tmp_path / "bad",
        wav_scp="rec1 /a/rec1.wav\nrec2 /a/rec2.wav\nrec0 /a/unused.wav\n",
        segments="spkA-u1 rec1 0 1.5\nspkA-u2 rec1 2.0 2.0\nspkB-u3 rec3 0.5 1.0\nspkB-u4 rec2 0 1\nspkB-u5 rec2 1 2\n"
        "spkB-u6 rec2 2 3\nspkB-u7 rec2 3 4\n",
        text="spkB-u7 OK\nspkA-u1 HELLO\r\n\nspkA-u2 X\nspkB-u3 Y\nspkB-u4 Z\nspkB-u5\nspkB-u6 ONE\nspkB-u6 TWO\n",
        utt2spk="spkA-u1 spkA\nspkA-u2 spkA\nspkB-u3 spkB\nspkB-u4 spkB\nspkB-u5 spkB\nspkB-u6 spkB\nspkB-u7 spkB\n"
        "spkC-u8 spkC\nspkB-u7 spkB\n",
        spk2utt="spkZ nothing\n",
    )
    original_text = (d / "text").read_bytes()
    report = fix_data_dir(d)
    assert (report.total, report.kept) == (8, 3)
    assert dict(report.dropped) == {
        "malformed segments line or times": 1,
        "recording of segments not in wav.scp": 1,
        "empty transcript in text": 1,
        "conflicting duplicate lines in text": 1,
        "not in text": 1,
    }
    assert dict(report.malformed_lines) == {"text": 1}
    assert report.dropped_recordings == 1
    assert validate_data_dir(d) == []
    assert read_kv(d / "text") == {"spkA-u1": "HELLO", "spkB-u4": "Z", "spkB-u7": "OK"}
    assert read_kv(d / "wav.scp") == {"rec1": "/a/rec1.wav", "rec2": "/a/rec2.wav"}
    assert read_kv(d / "spk2utt") == {"spkA": "spkA-u1", "spkB": "spkB-u4 spkB-u7"}
    assert (d / ".backup" / "text").read_bytes() == original_text
    assert report.summary(d).splitlines()[0] == f"{d}: kept 3 of 8 utterances"


def test_fix_refuses_non_utf8(tmp_path):
    d = make_dir(tmp_path / "enc", text=b"spkA-u1 CAF\xe9\nspkA-u2 A\nspkB-u3 B\nspkB-u4 C\n")
    with pytest.raises(DataDirError) as e:
        fix_data_dir(d)
    assert str(e.value) == (
        f"{d}/text:1: not valid UTF-8 (byte 11: b'\\xe9') (1 such line(s)); fix_data_dir does not drop utterances for "
        f"this. Fix: re-encode the file (e.g. iconv -f latin1 -t utf-8 {d}/text)"
    )


def _corpus(tmp_path, n_spk=4, per_spk=(3, 1, 2, 4), extra=True) -> Path:
    wav, text, utt2spk = {}, {}, {}
    for s in range(n_spk):
        for i in range(per_spk[s]):
            u = f"s{s}-u{i}"
            wav[u], text[u], utt2spk[u] = f"/a/{u}.wav", f"WORDS {s} {i}", f"s{s}"
    d = tmp_path / "corpus"
    from fixtures.audio import write_data_dir

    write_data_dir(d, wav, text, utt2spk)
    if extra:
        write_kv(d / "instruction", {u: "Transcribe the audio." for u in utt2spk})
        write_kv(d / "spk2gender", {f"s{s}": "mf"[s % 2] for s in range(n_spk)})
    return d


def test_subset_modes(tmp_path):
    d = _corpus(tmp_path)
    utts = sorted(read_kv(d / "utt2spk"))
    assert subset_data_dir(d, tmp_path / "first", first=3) == utts[:3]
    assert subset_data_dir(d, tmp_path / "last", last=2) == utts[-2:]
    r1 = subset_data_dir(d, tmp_path / "r1", random_n=4, seed=7)
    assert r1 == subset_data_dir(d, tmp_path / "r2", random_n=4, seed=7) and len(set(r1)) == 4
    assert subset_data_dir(d, tmp_path / "ul", utt_list=["s3-u1", "s0-u0", "nope"]) == ["s0-u0", "s3-u1"]
    assert subset_data_dir(d, tmp_path / "sl", spk_list=["s2"]) == ["s2-u0", "s2-u1"]
    sl = tmp_path / "sl"
    assert validate_data_dir(sl) == []
    assert read_kv(sl / "spk2gender") == {"s2": "m"}
    assert sorted(read_kv(sl / "instruction")) == ["s2-u0", "s2-u1"]
    with pytest.raises(DataDirError, match=r"subset --first 11: .* has 10 utterances; choose 1\.\.10"):
        subset_data_dir(d, tmp_path / "x", first=11)


def test_combine_and_duplicate_error(tmp_path):
    a = _corpus(tmp_path / "a", n_spk=2, per_spk=(2, 1))
    b = tmp_path / "b"
    from fixtures.audio import write_data_dir

    write_data_dir(b, {"s1-t1": "/b/1.wav"}, {"s1-t1": "HI"}, {"s1-t1": "s1"})
    write_kv(b / "instruction", {"s1-t1": "Say it."})
    n = combine_data(tmp_path / "all", [a, b])
    assert n == 4
    c = tmp_path / "all"
    assert validate_data_dir(c) == []
    assert read_kv(c / "spk2utt") == {"s0": "s0-u0 s0-u1", "s1": "s1-t1 s1-u0"}
    assert not (c / "spk2gender").exists()  # only source a has it: skipped with a warning
    with pytest.raises(DataDirError) as e:
        combine_data(tmp_path / "dup", [a, b, a])
    assert str(e.value) == (
        f"combine: key 's0-u0' is in both {a}/instruction and {a}/instruction. Fix: make ids unique across corpora "
        "(e.g. prefix them with the corpus name) or drop one of the sources"
    )


def test_split_by_speaker_and_by_utterance(tmp_path):
    d = _corpus(tmp_path)  # speakers with 3, 1, 2, 4 utterances
    utt2spk = read_kv(d / "utt2spk")
    shards = split_utterances(utt2spk, 2)
    assert [len(s) for s in shards] == [4, 6]  # s0+s1 | s2+s3: speakers never straddle shards
    assert {utt2spk[u] for u in shards[0]}.isdisjoint({utt2spk[u] for u in shards[1]})
    assert split_utterances(utt2spk, 2) == shards  # deterministic
    assert [len(s) for s in split_utterances(utt2spk, 3, by_speaker=False)] == [3, 4, 3]  # cuts nearest to 10*j/3
    assert sum(split_utterances(utt2spk, 4), []) == sorted(utt2spk)
    fallback = split_utterances(utt2spk, 5)  # 4 speakers < 5 shards: per utterance
    assert [len(s) for s in fallback] == [2, 2, 2, 2, 2]
    with pytest.raises(DataDirError, match="cannot split 10 utterances into 11 shards"):
        split_utterances(utt2spk, 11)
    dirs = split_data_dir(d, 3)
    assert dirs == [d / "split3" / str(j) for j in (1, 2, 3)]
    assert all(validate_data_dir(x) == [] for x in dirs)
    assert sorted(sum((list(read_kv(x / "text")) for x in dirs), [])) == sorted(utt2spk)


def _sh(*args, stdin=None):
    return subprocess.run([str(REPO / "utils" / args[0]), *map(str, args[1:])], input=stdin, text=True,
                          capture_output=True, env={**os.environ, "PATH": f"{Path(sys.executable).parent}:"
                                                    f"{os.environ['PATH']}"})


def test_shell_wrappers(tmp_path):
    d = _corpus(tmp_path)
    r = _sh("utt2spk_to_spk2utt.sh", d / "utt2spk")
    assert r.returncode == 0 and r.stdout == (d / "spk2utt").read_text()
    r = _sh("spk2utt_to_utt2spk.sh", stdin=(d / "spk2utt").read_text())
    assert r.returncode == 0 and r.stdout == (d / "utt2spk").read_text()
    assert _sh("validate_data_dir.sh", d).returncode == 0
    (d / "text").write_text("s0-u1 B\ns0-u0 A\n")
    r = _sh("validate_data_dir.sh", "--no-feats", d)
    assert r.returncode == 1
    assert f"{d}/text:2: not sorted: key 's0-u0' comes after 's0-u1' (LC_ALL=C order)" in r.stderr
    assert "Traceback" not in r.stderr
    r = _sh("fix_data_dir.sh", d)
    assert r.returncode == 0 and "kept 2 of 10 utterances" in r.stderr and "dropped 8: not in text" in r.stderr
    r = _sh("subset_data_dir.sh", "--first", d, 1, tmp_path / "one")
    assert r.returncode == 0, r.stderr
    assert list(read_kv(tmp_path / "one" / "text")) == ["s0-u0"]
    r = _sh("split_data.sh", "--per-utt", d, 2)
    assert r.returncode == 0 and (d / "split2utt" / "2" / "text").read_text() == "s0-u1 B\n"
    r = _sh("combine_data.sh", tmp_path / "c", d, d)
    assert r.returncode == 1 and "combine: key 's0-u0' is in both" in r.stderr and "Traceback" not in r.stderr


def test_task_files_may_cover_a_subset_but_not_more(tmp_path):
    """Stage 3 drops refused answers and a training set gives instructions to some utterances: those files may
    cover fewer utterances than utt2spk, never others."""
    from blspkd.data.kaldi_dir import validate_data_dir, write_data_dir, write_kv

    d = tmp_path / "data"
    write_data_dir(d, {"spkA-u1": "spkA", "spkA-u2": "spkA"}, text={"spkA-u1": "a b", "spkA-u2": "c d"})
    write_kv(d / "wav.scp", {"spkA-u1": "/a.wav", "spkA-u2": "/b.wav"})
    for name in ("instruction", "response", "continuation", "translation"):
        write_kv(d / name, {"spkA-u1": "x"})
    assert validate_data_dir(d) == []
    write_kv(d / "response", {"spkA-u3": "x"})
    assert validate_data_dir(d) == [f"{d}/response:1: utterance 'spkA-u3' is not in utt2spk. Fix: "
                                    + FIX.format(d=d)]
