"""Scoring (stage 7): hand-computed WER/CER/BLEU/chrF, normalisers, tokeniser choice, bad inputs, CLI, RESULTS.md."""
from __future__ import annotations

import hashlib
import json
import math
from pathlib import Path

import pytest
import yaml

from blspkd.bin import score as score_cli
from blspkd.scoring import ScoringError, parse_metrics, score_files
from blspkd.scoring import bleu as bleu_mod
from blspkd.scoring.normalize import basic_normalize, get_normalizer, resolve_normalizer, whisper_english_normalize
from blspkd.scoring.report import collect_results, config_hash, write_results_md, write_set_results
from blspkd.scoring.text_files import pair_keys, read_text_file
from blspkd.scoring.wer import error_rate, format_alignment


def _ident(text: str) -> str:
    """No normalisation beyond whitespace, so the hand alignments below are over exactly the words written."""
    return " ".join(text.split())


def _write(path: Path, lines: list[str]) -> Path:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_text("".join(line + "\n" for line in lines), encoding="utf-8")
    return path


# ---------------------------------------------------------------------------------------------------------- WER / CER


def test_wer_hand_alignment_sub_and_del():
    # ref: the cat sat on the mat      hyp: the cat sit on mat
    #      =   =   S   =  D   =        -> H=4 S=1 D=1 I=0, WER = 2/6
    er = error_rate(["u"], {"u": "the cat sat on the mat"}, {"u": "the cat sit on mat"}, _ident)
    assert (er.hits, er.substitutions, er.deletions, er.insertions) == (4, 1, 1, 0)
    assert er.rate == pytest.approx(2 / 6)
    assert er.utts[0].ops == [
        (" ", "the", "the"), (" ", "cat", "cat"), ("S", "sat", "sit"), (" ", "on", "on"), ("D", "the", ""),
        (" ", "mat", "mat"),
    ]
    assert format_alignment(er.utts[0]).splitlines() == [
        "u  S=1 D=1 I=0 N=6 err=33.3%",
        "REF: the cat sat on the mat",
        "HYP: the cat sit on *** mat",
        "OPS:         S      D",
    ]


def test_wer_corpus_rate_sums_counts_over_utterances():
    refs = {"a": "good morning", "b": "hello world", "c": "one two three"}
    hyps = {"a": "good good morning", "b": "", "c": "one two three"}
    # a: one insertion (N=2); b: two deletions (N=2), empty hypothesis allowed; c: correct (N=3)
    er = error_rate(["a", "b", "c"], refs, hyps, _ident)
    assert (er.hits, er.substitutions, er.deletions, er.insertions) == (5, 0, 2, 1)
    assert er.rate == pytest.approx(3 / 7)  # not the mean of per-utterance rates (0.5, 1.0, 0) / 3
    assert er.num_utts_with_errors == 2
    assert er.summary()["sentence_error_rate"] == pytest.approx(200 / 3, abs=1e-3)
    assert [u.errors for u in er.utts] == [1, 2, 0]


def test_cer_hand_examples():
    # "abc d" vs "abd d": a b c ␣ d / a b d ␣ d -> one substitution of five characters
    er = error_rate(["u"], {"u": "abc d"}, {"u": "abd d"}, _ident, unit="char")
    assert (er.substitutions, er.deletions, er.insertions, er.num_ref) == (1, 0, 0, 5)
    # "ab c" vs "abc": the space is a deleted character -> 1/4
    er = error_rate(["u"], {"u": "ab c"}, {"u": "abc"}, _ident, unit="char")
    assert (er.substitutions, er.deletions, er.insertions) == (0, 1, 0)
    assert er.rate == pytest.approx(0.25)
    assert format_alignment(er.utts[0], gap="*").splitlines()[1:] == ["REF: a b ␣ c", "HYP: a b * c", "OPS:     D"]


def test_error_rate_with_all_references_empty_after_normalisation_is_an_error():
    norm = get_normalizer("auto", "en")
    with pytest.raises(ValueError, match="every reference is empty after normalisation"):
        error_rate(["u"], {"u": "Hmm."}, {"u": "hmm"}, norm)


# --------------------------------------------------------------------------------------------------------- normalisers


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Mr. Smith won't colour it, twenty five times!", "mister smith will not color it 25 times"),
        ("Hmm, I [laughs] can't (really) go.", "i can not go"),
        ("  The   CAT's   hat.  ", "the cat is hat"),
        ("It costs $3.50.", "it costs $3.50"),
    ],
)
def test_whisper_english_normalizer(text, expected):
    assert whisper_english_normalize(text) == expected


@pytest.mark.parametrize(
    "text,expected",
    [
        ("Ça, c'est «génial»!", "ça c est génial"),
        ("ＡＢＣ１２３", "abc123"),  # NFKC folds full-width forms
        ("नमस्ते, दुनिया!", "नमस्ते दुनिया"),  # combining vowel signs and virama are kept
        ("你好，世界。", "你好 世界"),
    ],
)
def test_basic_normalizer(text, expected):
    assert basic_normalize(text) == expected


def test_normalizer_choice_by_language():
    assert resolve_normalizer("auto", "en") == "whisper_en"
    assert resolve_normalizer("auto", "en-US") == "whisper_en"
    assert resolve_normalizer("auto", "de") == "basic"
    assert resolve_normalizer("none", "en") == "none"
    with pytest.raises(ValueError, match="unknown normalizer 'whisper'"):
        resolve_normalizer("whisper", "en")


# --------------------------------------------------------------------------------------------------------- BLEU / chrF


def test_bleu_identical_and_disjoint():
    assert bleu_mod.corpus_bleu(["the cat sat on the mat"], ["the cat sat on the mat"], "13a")["score"] == 100.0
    assert bleu_mod.corpus_bleu(["a b c d e"], ["v w x y z"], "13a")["score"] == 0.0


def test_bleu_hand_computed_precisions():
    # hyp: the cat sat on the mat / ref: the cat sat on a mat
    # 1-grams 5/6 (second 'the' clipped), 2-grams 3/5, 3-grams 2/4, 4-grams 1/3, BP = 1 (equal lengths)
    out = bleu_mod.corpus_bleu(["the cat sat on the mat"], ["the cat sat on a mat"], "13a")
    assert out["counts"] == [5, 3, 2, 1] and out["totals"] == [6, 5, 4, 3]
    assert out["score"] == pytest.approx(100 * (5 / 6 * 3 / 5 * 2 / 4 * 1 / 3) ** 0.25, abs=1e-3)
    assert out["signature"] == "nrefs:1|case:mixed|eff:no|tok:13a|smooth:exp|version:" + _sacrebleu_version()


def test_bleu_brevity_penalty():
    # every n-gram of the 4-word hypothesis matches; BP = exp(1 - 6/4)
    out = bleu_mod.corpus_bleu(["the cat sat on"], ["the cat sat on the mat"], "13a")
    assert out["brevity_penalty"] == pytest.approx(math.exp(-0.5), abs=1e-6)
    assert out["score"] == pytest.approx(100 * math.exp(-0.5), abs=1e-3)


def test_chrf_hand_computed():
    # "ab" vs "ac": char 1-grams P = R = 1/2 -> F = 1/2; 2-grams 0; no 3..6-grams -> mean over 2 orders = 25
    assert bleu_mod.corpus_chrf(["ab"], ["ac"])["score"] == pytest.approx(25.0)
    assert bleu_mod.corpus_chrf(["same text"], ["same text"])["score"] == pytest.approx(100.0)


def test_zh_tokenizer_splits_characters():
    out = bleu_mod.corpus_bleu(["我爱他"], ["我爱你"], bleu_mod.tokenizer_for_language("zh-CN"))
    assert out["counts"] == [2, 1, 0, 0] and out["totals"] == [3, 2, 1, 0]
    assert "tok:zh" in out["signature"]


def _sacrebleu_version() -> str:
    from importlib.metadata import version

    return version("sacrebleu")


@pytest.mark.parametrize(
    "lang,expected", [("en", "13a"), ("de-DE", "13a"), ("zh", "zh"), ("yue", "zh"), ("th", "char")]
)
def test_tokenizer_for_language(lang, expected):
    assert bleu_mod.tokenizer_for_language(lang) == expected


@pytest.mark.parametrize("lang,mecab", [("ja", "ja-mecab"), ("ko", "ko-mecab")])
def test_tokenizer_mecab_used_when_installed_else_char(monkeypatch, lang, mecab):
    installed = bleu_mod.tokenizer_available(mecab)
    assert bleu_mod.tokenizer_for_language(lang) == (mecab if installed else "char")
    monkeypatch.setattr(bleu_mod, "tokenizer_available", lambda name: name == mecab)
    assert bleu_mod.tokenizer_for_language(lang) == mecab
    monkeypatch.setattr(bleu_mod, "tokenizer_available", lambda name: False)
    assert bleu_mod.tokenizer_for_language(lang) == "char"


def test_sentence_scores_worst_first():
    rows = bleu_mod.sentence_scores(["a", "b"], ["x y z", "the cat sat"], ["the dog ran", "the cat sat"], "13a")
    assert [r["key"] for r in rows] == ["a", "b"]
    assert rows[1]["bleu"] == 100.0 and rows[1]["chrf"] == 100.0


# --------------------------------------------------------------------------------------------------------- bad inputs


def test_read_text_file_empty_hypothesis_allowed(tmp_path):
    p = _write(tmp_path / "hyp.txt", ["u1 hello there", "u2", "u3   "])
    assert read_text_file(p, "hypothesis") == {"u1": "hello there", "u2": "", "u3": ""}


def test_empty_reference_names_file_and_line(tmp_path):
    p = _write(tmp_path / "text", ["u1 hello", "u2 ", "u3 x"])
    with pytest.raises(ScoringError) as e:
        read_text_file(p, "reference")
    assert str(e.value).startswith(f"{p}:2: empty reference for utterance 'u2'; give it a transcript or drop")


def test_duplicate_blank_and_encoding_errors(tmp_path):
    p = _write(tmp_path / "dup", ["u1 a", "u2 b", "u1 c"])
    with pytest.raises(ScoringError, match=r"dup:3: duplicate utterance id 'u1' \(first at line 1\)"):
        read_text_file(p, "reference")
    p = _write(tmp_path / "blank", ["u1 a", "", "u2 b"])
    with pytest.raises(ScoringError, match=r"blank:2: blank line"):
        read_text_file(p, "hypothesis")
    p = tmp_path / "latin1"
    p.write_bytes(b"u1 ok\nu2 caf\xe9\n")
    with pytest.raises(ScoringError, match=r"latin1:2: not valid UTF-8"):
        read_text_file(p, "reference")
    with pytest.raises(ScoringError, match="reference file not found: .*nope"):
        read_text_file(tmp_path / "nope", "reference")


def test_mismatched_keys_error_names_counts_and_keys():
    refs = {"a": "x", "b": "y", "c": "z"}
    hyps = {"a": "x", "d": "w"}
    with pytest.raises(ScoringError) as e:
        pair_keys(refs, hyps, "ref.txt", "hyp.txt", allow_missing=False)
    assert str(e.value) == (
        "keys differ: 2 reference keys have no hypothesis in hyp.txt: b, c; 1 hypothesis keys are not in the "
        "reference ref.txt: d. Re-run decoding for the missing ones, or pass --allow_missing to score only the "
        "1 common utterances."
    )


def test_allow_missing_scores_intersection_and_logs(caplog):
    refs = {"a": "x y", "b": "y", "c": "z"}
    hyps = {"c": "z", "a": "x", "d": "w"}
    keys, missing, extra = pair_keys(refs, hyps, "r", "h", allow_missing=True)
    assert (keys, missing, extra) == (["a", "c"], 1, 1)
    assert "scoring 2 common utterances; 1 reference keys without hypothesis, 1 hypothesis keys" in caplog.text


def test_parse_metrics():
    assert parse_metrics("all") == ["wer", "cer", "bleu", "chrf"]
    assert parse_metrics("wer, align,wer") == ["wer", "align"]
    with pytest.raises(ScoringError, match="unknown metric 'ber'; choose from wer, cer, bleu, chrf, align"):
        parse_metrics("wer,ber")


# -------------------------------------------------------------------------------------------------------- files + CLI


@pytest.fixture
def decode_tree(tmp_path):
    """A fake recipe: data/test/text, two models' decode dirs (one with decode_config.yaml + model config)."""
    ref = _write(tmp_path / "data/test/text", ["u1 The cat sat on the mat.", "u2 Hello, world!", "u3 Good morning."])
    d1 = tmp_path / "exp/kd_a/decode_test"
    _write(d1 / "hyp.txt", ["u1 the cat sit on mat", "u2 hello world", "u3"])
    _write(d1 / "hyp.jsonl", ['{"key": "u1"}', '{"key": "u2"}', '{"key": "u3"}'])
    decode_cfg = f"model_dir: {tmp_path}/exp/kd_a\nbeam_size: 1\ngenerate:\n  max_new_tokens: 64\n"
    (d1 / "decode_config.yaml").write_text(decode_cfg)
    (tmp_path / "exp/kd_a/config.json").write_text('{"b": 2, "a": [1, 2]}')
    d2 = tmp_path / "exp/kd_b/decode_test_continuation"
    _write(d2 / "hyp.txt", ["u1 and then it slept", "u2 said the man", "u3 to you all"])
    teacher = _write(tmp_path / "dump/test/continuation", ["u1 and then it slept", "u2 said the boy", "u3 to all"])
    return tmp_path, ref, d1, d2, teacher


def test_score_files_and_result_files(decode_tree):
    root, ref, d1, _, _ = decode_tree
    res = score_files(ref, d1 / "hyp.txt", parse_metrics("all"), "en", command="cmd")
    s = res.summary
    # normalised: u1 2 errors / 6, u2 0 / 2, u3 2 deletions / 2 -> WER 4/10
    assert s["metrics"]["wer"]["score"] == pytest.approx(40.0)
    assert (s["metrics"]["wer"]["substitutions"], s["metrics"]["wer"]["deletions"]) == (1, 3)
    assert s["num_empty_hyp"] == 1 and s["num_scored"] == 3
    assert s["ref_sha256"] == hashlib.sha256(ref.read_bytes()).hexdigest()
    assert s["bleu_tokenizer"] == "13a" and "tok:13a" in s["metrics"]["bleu"]["signature"]
    assert s["normalizer"].startswith("whisper_en (transformers ")
    assert set(s["versions"]) == {"blspkd", "jiwer", "sacrebleu", "transformers"}
    written = write_set_results(d1, res)
    assert {p.name for p in written} == {
        "result.json", "result.txt", "errors_wer.txt", "utts_wer.jsonl", "errors_cer.txt", "utts_cer.jsonl",
        "sentences_bleu.jsonl",
    }
    assert json.loads((d1 / "result.json").read_text()) == s
    errors = (d1 / "errors_wer.txt").read_text().splitlines()
    assert errors[0] == "# 2 of 3 utterances with errors (WER), most errors first"
    assert errors[1:5] == [
        "u1  S=1 D=1 I=0 N=6 err=33.3%", "REF: the cat sat on the mat", "HYP: the cat sit on *** mat",
        "OPS:         S      D",
    ]
    utts = [json.loads(line) for line in (d1 / "utts_wer.jsonl").read_text().splitlines()]
    assert [u["key"] for u in utts] == ["u1", "u2", "u3"]
    assert utts[0]["raw_ref"] == "The cat sat on the mat." and utts[0]["ops"][4] == ["D", "the", ""]
    txt = (d1 / "result.txt").read_text()
    assert "WER (%)     40.00  [S=1 D=3 I=0 N=10, hits=6]" in txt
    assert "substitutions: 'sat -> sit' x1" in txt


def test_cli_scores_and_aggregates(decode_tree, capsys, monkeypatch):
    root, ref, d1, d2, teacher = decode_tree
    monkeypatch.chdir(root)
    assert score_cli.main(["--ref", "data/test/text", "--hyp", str(d1 / "hyp.txt"), "--metric", "wer,bleu"]) == 0
    assert (d1 / "result.json").is_file()  # --out_dir defaults to the hypothesis' directory
    assert score_cli.main([
        "--ref", "dump/test/continuation", "--hyp", str(d2 / "hyp.txt"), "--metric", "align", "--out-dir", str(d2),
    ]) == 0
    align = json.loads((d2 / "result.json").read_text())["metrics"]
    assert set(align) == {"align_bleu", "align_chrf", "align_chrf_mismatched"}
    capsys.readouterr()
    assert score_cli.main(["--aggregate", "exp", "--results_md", "RESULTS.md"]) == 0
    table = capsys.readouterr().out
    wer = json.loads((d1 / "result.json").read_text())["metrics"]
    b = wer["bleu"]
    precisions = "/".join(f"{p:.1f}" for p in b["precisions"])
    assert table.splitlines() == [
        "| model | set | metric | score | details | utts |",
        "|---|---|---|---|---|---|",
        "| exp/kd_a | test | WER (%) | 40.00 | S=1 D=3 I=0 N=10 | 3 |",
        f"| exp/kd_a | test | BLEU | {b['score']:.2f} | {precisions} BP={b['brevity_penalty']:.3f} | 3 |",
        f"| exp/kd_b | test_continuation | align BLEU | {align['align_bleu']['score']:.2f} | "
        + "/".join(f"{p:.1f}" for p in align["align_bleu"]["precisions"])
        + f" BP={align['align_bleu']['brevity_penalty']:.3f} | 3 |",
        f"| exp/kd_b | test_continuation | align chrF | {align['align_chrf']['score']:.2f} |  | 3 |",
        f"| exp/kd_b | test_continuation | align chrF, other utterances' refs | "
        f"{align['align_chrf_mismatched']['score']:.2f} |  | 3 |",
    ]
    md = (root / "RESULTS.md").read_text()
    assert table in md
    # config hashes: sha256 of the canonical JSON of the parsed config, independent of key order
    model_hash = hashlib.sha256(json.dumps({"a": [1, 2], "b": 2}, sort_keys=True).encode()).hexdigest()
    assert f"config.json sha256 `{model_hash[:12]}`" in md
    decode_cfg = yaml.safe_load((d1 / "decode_config.yaml").read_text())
    decode_hash = hashlib.sha256(json.dumps(decode_cfg, sort_keys=True).encode()).hexdigest()
    assert f"decode_config.yaml` sha256 `{decode_hash[:12]}`" in md
    assert "`beam_size=1`, `generate.max_new_tokens=64`" in md
    assert "(3 lines in hyp.jsonl)" in md
    assert "decode config: none found (decode_config.yaml absent)" in md  # kd_b has none: not an error
    assert "scoring command: `python -m blspkd.bin.score --ref dump/test/continuation" in md
    # paths relative to the recipe (RESULTS.md's directory), none of this machine's
    assert str(root) not in md
    assert "- model dir: `exp/kd_a`" in md and "`model_dir=exp/kd_a`" in md
    assert "hypothesis: `exp/kd_a/decode_test/hyp.txt`" in md


def test_cli_errors_are_one_clear_line(decode_tree, capsys, monkeypatch):
    root, ref, d1, _, _ = decode_tree
    monkeypatch.chdir(root)
    _write(root / "short_hyp.txt", ["u1 the cat"])
    assert score_cli.main(["--ref", "data/test/text", "--hyp", "short_hyp.txt", "--out_dir", "out"]) == 1
    err = capsys.readouterr().err
    assert err.startswith("python -m blspkd.bin.score: error: keys differ: 2 reference keys have no hypothesis in "
                          "short_hyp.txt: u2, u3.")
    assert "Traceback" not in err and not (root / "out").exists()
    assert score_cli.main(
        ["--ref", "data/test/text", "--hyp", "short_hyp.txt", "--out_dir", "out", "--allow_missing"]
    ) == 0
    assert json.loads((root / "out/result.json").read_text())["num_missing_hyp"] == 2
    assert score_cli.main(["--aggregate", "nowhere"]) == 1
    assert "nowhere: no such directory to collect results from" in capsys.readouterr().err


def test_cli_help_has_usage(capsys):
    with pytest.raises(SystemExit) as e:
        score_cli.main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "python -m blspkd.bin.score --ref data/test/text --hyp exp/x/decode_test/hyp.txt" in out
    assert "--allow_missing, --allow-missing" in out


def test_config_hash_ignores_key_order_and_formatting(tmp_path):
    a = tmp_path / "a.yaml"
    b = tmp_path / "b.yaml"
    a.write_text("x: 1\ny: {z: [1, 2]}\n")
    b.write_text("y:\n  z:\n  - 1\n  - 2\nx: 1  # same config\n")
    assert config_hash(a) == config_hash(b)
    b.write_text("x: 2\ny: {z: [1, 2]}\n")
    assert config_hash(a) != config_hash(b)


def test_aggregate_without_results_is_an_error(tmp_path):
    (tmp_path / "exp/t/decode_test").mkdir(parents=True)
    with pytest.raises(FileNotFoundError, match="no result.json under .*; run scoring \\(stage 7\\) first"):
        collect_results([tmp_path / "exp"])
    with pytest.raises(FileNotFoundError):
        write_results_md(collect_results([tmp_path / "missing"]), tmp_path / "R.md")


def test_aggregate_leaves_out_foreign_result_json(decode_tree, caplog):
    root, ref, d1, _, _ = decode_tree
    write_set_results(d1, score_files(ref, d1 / "hyp.txt", ["wer"], "en"))
    other = root / "exp/kd_a/train/result.json"
    other.parent.mkdir(parents=True)
    other.write_text('{"loss": 1.0}')
    entries = collect_results([root / "exp"])
    assert [Path(e["decode_dir"]).name for e in entries] == ["decode_test"]
    assert "train/result.json: not a blspkd score result" in caplog.text
    (d1 / "result.json").write_text("{broken")
    with pytest.raises(ValueError, match="decode_test/result.json: unreadable .*; re-run scoring for"):
        collect_results([root / "exp"])


def test_mismatched_chrf_is_the_mean_over_shifted_references():
    from sacrebleu.metrics import CHRF

    from blspkd.scoring.bleu import corpus_chrf_mismatched

    hyps = ["le chat dort", "il pleut", "je mange une pomme"]
    refs = ["le chat dort bien", "il pleut beaucoup", "je mange"]
    by_hand = [CHRF().corpus_score(hyps, [["il pleut beaucoup", "je mange", "le chat dort bien"]]).score,
               CHRF().corpus_score(hyps, [["je mange", "le chat dort bien", "il pleut beaucoup"]]).score]
    got = corpus_chrf_mismatched(hyps, refs)
    assert got["shifts"] == [1, 2] and got["num_utts"] == 3
    assert got["score"] == pytest.approx(sum(by_hand) / 2, abs=1e-4)
    assert got["score"] < CHRF().corpus_score(hyps, [refs]).score  # the matched references share more
    assert corpus_chrf_mismatched(hyps[:1], refs[:1]) is None
    many = corpus_chrf_mismatched([f"h{i}" for i in range(40)], [f"r{i}" for i in range(40)])
    assert many["shifts"] == [1, 5, 10, 15, 20, 25, 30, 35]
