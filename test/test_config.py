"""The strict YAML + command-line configuration (blspkd.utils.config)."""
from dataclasses import dataclass, field
from pathlib import Path
from typing import Literal, Optional

import pytest

from blspkd.utils.config import ConfigError, from_yaml_file, parse_config, save_config


@dataclass
class Optim:
    lr: float = 1e-4
    warmup_steps: int = 1000


@dataclass
class Cfg:
    tag: str = "exp"
    precision: Literal["fp32", "bf16"] = "fp32"
    losses: dict[str, float] = field(default_factory=lambda: {"input_kl": 1.0})
    train_dirs: list[str] = field(default_factory=list)
    max_steps: Optional[int] = None  # noqa: UP045 (typing.Optional on purpose: configs written either way must parse)
    grad_checkpointing: bool = False
    optim: Optim = field(default_factory=Optim)


def test_yaml_then_cli_overrides(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("optim:\n  lr: 2.0e-5\nlosses: {input_kl: 1.0, cif: 0.5}\ntrain_dirs: [a, b]\n")
    cfg = parse_config(Cfg, ["--config", str(conf), "--optim.warmup-steps", "10", "--tag=001", "--max_steps", "5"])
    assert cfg.optim.lr == 2e-5 and cfg.optim.warmup_steps == 10
    assert cfg.losses == {"input_kl": 1.0, "cif": 0.5} and cfg.train_dirs == ["a", "b"]
    assert cfg.tag == "001" and cfg.max_steps == 5


def test_yaml_typo_names_file_key_and_suggestion(tmp_path):
    conf = tmp_path / "c.yaml"
    conf.write_text("optim:\n  lrr: 0.1\n")
    with pytest.raises(ConfigError, match=r"c\.yaml: unknown key 'optim\.lrr' \(did you mean 'optim\.lr'\?\)"):
        parse_config(Cfg, ["--config", str(conf)])


def test_cli_errors_name_the_option():
    with pytest.raises(ConfigError, match=r"command line: unknown key 'optim\.warmup'"):
        parse_config(Cfg, ["--optim.warmup", "3"])
    with pytest.raises(ConfigError, match=r"'optim.warmup_steps' must be int, got 'many'"):
        parse_config(Cfg, ["--optim.warmup_steps", "many"])
    with pytest.raises(ConfigError, match=r"'precision' must be one of \['fp32', 'bf16'\], got 'fp16'"):
        parse_config(Cfg, ["--precision", "fp16"])
    with pytest.raises(ConfigError, match=r"'grad_checkpointing' must be bool"):
        parse_config(Cfg, ["--grad_checkpointing", "3"])
    with pytest.raises(ConfigError, match=r"option '--tag' needs a value"):
        parse_config(Cfg, ["--tag"])


def test_print_config_is_complete_and_round_trips(tmp_path, capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(Cfg, ["--optim.lr", "0.5", "--print_config"])
    assert e.value.code == 0
    printed = capsys.readouterr().out
    assert "lr: 0.5" in printed and "warmup_steps: 1000" in printed and "precision: fp32" in printed
    out = tmp_path / "resolved.yaml"
    out.write_text(printed)
    assert from_yaml_file(Cfg, out) == parse_config(Cfg, ["--optim.lr", "0.5"])
    save_config(Cfg(tag="x"), tmp_path / "sub" / "config.yaml")
    assert from_yaml_file(Cfg, tmp_path / "sub" / "config.yaml").tag == "x"


def test_missing_and_invalid_files(tmp_path):
    with pytest.raises(ConfigError, match="config file not found: .*nope.yaml"):
        parse_config(Cfg, ["--config", str(tmp_path / "nope.yaml")])
    bad = tmp_path / "bad.yaml"
    bad.write_text("- a\n- b\n")
    with pytest.raises(ConfigError, match="top level must be a mapping"):
        parse_config(Cfg, ["--config", str(bad)])


@dataclass
class Texts:
    separator: str = "\n"  # text between the instruction and the speech
    # Instruction of an example that has none.
    instruction: str | None = "Repeat."
    kind: Literal["yes", "no"] = "no"
    count: int = 3


def test_text_options_take_the_command_line_text_as_typed():
    cfg = parse_config(Texts, ["--separator", "\n", "--instruction", "yes", "--kind", "yes", "--count", "4"])
    assert (cfg.separator, cfg.instruction, cfg.kind, cfg.count) == ("\n", "yes", "yes", 4)
    assert parse_config(Texts, ["--separator", "", "--instruction", "1e-4"]).instruction == "1e-4"
    assert parse_config(Texts, ["--separator", "", "--instruction", "null"]).instruction is None
    assert parse_config(Texts, ["--separator", "null"]).separator == "null"  # not optional: "null" is its text


def test_help_lists_every_key_with_default_and_comment_on_one_line_each(capsys):
    with pytest.raises(SystemExit) as e:
        parse_config(Texts, ["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    keys = out.split("(default, then what it is):\n", 1)[1].splitlines()
    assert keys == [
        r'  --separator "\n"'.ljust(48) + " text between the instruction and the speech",
        "  --instruction Repeat.".ljust(48) + " Instruction of an example that has none.",
        "  --kind no",
        "  --count 3",
    ]
    with pytest.raises(SystemExit):
        parse_config(Cfg, ["-h"])
    out = capsys.readouterr().out
    assert "\n\n  --" not in out.split("what it is):", 1)[1]  # no blank line between options
    assert "  --optim.warmup_steps 1000" in out and "  --losses {\"input_kl\": 1.0}" in out


@dataclass
class Weights:
    a: float | None = None
    b: float | None = None


@dataclass
class Lora:
    r: int = 16
    dropout: float = 0.05


@dataclass
class Model:
    optim: Optim = field(default_factory=Optim)
    weights: Weights = field(default_factory=lambda: Weights(a=1.0), metadata={"whole": True})
    lora: Lora | None = None


def test_sections_merge_whole_sections_replace_and_optional_sections_turn_on(tmp_path):
    conf = tmp_path / "m.yaml"
    conf.write_text("optim: {lr: 0.5}\nweights: {b: 2}\n")
    cfg = from_yaml_file(Model, conf)
    assert cfg.optim == Optim(lr=0.5, warmup_steps=1000)  # merged into the defaults
    assert cfg.weights == Weights(a=None, b=2.0)  # replaced: a mapping names every weight
    assert cfg.lora is None
    cfg = parse_config(Model, ["--config", str(conf), "--weights.a", "3", "--lora.r", "4"])
    assert cfg.weights == Weights(a=3.0, b=2.0) and cfg.lora == Lora(r=4, dropout=0.05)
    assert parse_config(Model, ["--lora", "{dropout: 0.1}"]).lora == Lora(r=16, dropout=0.1)
    assert parse_config(Model, ["--lora.r", "4", "--lora", "null"]).lora is None
    with pytest.raises(ConfigError, match=r"command line: lora: unknown key 'rr' \(did you mean 'r'\?\)"):
        parse_config(Model, ["--lora", "{rr: 4}"])
    with pytest.raises(ConfigError, match=r"unknown key 'weights\.c'"):
        parse_config(Model, ["--weights.c", "1"])

# ------------------------------------------------------------------------------------------ the CLI dialect of bin/
ENTRY_POINTS = sorted(p.stem for p in (Path(__file__).resolve().parents[1] / "blspkd/bin").glob("*.py")
                      if not p.stem.startswith("_"))


@pytest.mark.parametrize("module", ENTRY_POINTS)
def test_every_entry_point_speaks_one_dialect(module, capsys):
    """A usage mistake: exit 2 and one '<prog>: error:' line, no traceback; --help: the Usage block first, exit 0,
    no blank line inside the option list."""
    import importlib

    main = importlib.import_module(f"blspkd.bin.{module}").main
    assert main(["--no_such_option", "1"]) == 2
    err = capsys.readouterr().err
    assert err.startswith(f"python -m blspkd.bin.{module}: error: ") and err.count("\n") == 1, err
    with pytest.raises(SystemExit) as e:
        main(["--help"])
    assert e.value.code == 0
    out = capsys.readouterr().out
    assert "Usage:" in out.split("\n\n")[1] or "Usage:" in out.split("\n\n")[2]
    options = out.split("options:\n", 1)[1].split("\n\nEvery key can be set")[0]
    assert "\n\n  --" not in options  # argparse groups are separated, options are not
    spelled = {w.rstrip(",") for w in options.split() if w.startswith("--")}
    assert {w.replace("_", "-") for w in spelled} <= spelled  # every --foo_bar also as --foo-bar


def test_internal_errors_exit_3_with_the_traceback(capsys):
    from blspkd.bin._args import cli

    @cli
    def main(argv=None):
        raise KeyError("a bug")

    assert main([]) == 3
    err = capsys.readouterr().err
    assert "Traceback (most recent call last)" in err and "raise KeyError" in err
    assert err.rstrip().splitlines()[-1].startswith(f"python -m {__name__}: internal error: KeyError: 'a bug' (a bug")
