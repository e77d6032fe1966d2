"""Decoding (recipe stage 6): a trained BLSP-KD model turns a dump dir's features into text, per task, in shards.

For each utterance the adapter's CIF predicts the number of speech tokens, N_hat = max(1, round(sum_t alpha_t))
(doc/method.md §3.2), and the LLM generates from ``[prefix | instruction | N_hat speech tokens | suffix]`` with a KV
cache, PLoRA on the speech positions of the prompt only (``BlspKdModel.generate``). Greedy or beam search; repetition
controls are transformers' ``repetition_penalty`` and ``no_repeat_ngram_size``.

Tasks: any of the task registry (blspkd/tasks.py, ``python -m blspkd.bin.tasks list``), which gives each utterance
its instruction (the training tasks' defaults, so a model is asked what it was taught; ``{language}`` from
``language``) and names the per-utterance file that holds its reference. ``instruction`` (or ``instruction_file``, its
text from a file) overrides the task's instruction for every utterance.

Sharding (blspkd/utils/shards.py): ``shard`` J of ``num_shards`` decodes the J-th contiguous block of the sorted keys
into ``<out_dir>/shards/hyp.J.jsonl`` and its marker ``.completed.J`` (the settings and timing); a shard already done
with the same settings and model is skipped. ``merge`` checks that every shard is done with the same settings and
writes, in key order:

    hyp.txt              ``<key> <hypothesis>`` (Kaldi style, one line each)
    hyp.jsonl            key, instruction, hypothesis, reference, num_speech_tokens (CIF-predicted),
                         num_transcript_tokens, num_generated_tokens
    ref.txt              the task's references, for the utterances that have one (what stage 7 scores against)
    decode_config.yaml   the exact settings, the model dir, sha256 of its config.json and weights, package versions
    decode_stats.json    real-time factor and generated tokens/s (also logged)
    .completed           written last (the settings)

An utterance is decoded alone or in any batch with the same result up to floating-point noise: the encoder masks
padding and the prompts are left-padded with positions following the attention mask.
"""
from __future__ import annotations

import hashlib
import json
import logging
import time
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from tqdm import tqdm

from blspkd import tasks
from blspkd.data.kaldi_dir import read_kv, write_kv
from blspkd.data.mel import WhisperLogMel
from blspkd.teacher import one_line
from blspkd.train.dataset import DumpDir
from blspkd.utils.config import ConfigError
from blspkd.utils.shards import MARKER, ShardError, Shards, shard_keys, write_marker

logger = logging.getLogger(__name__)


class DecodeError(RuntimeError):
    """Decoding cannot go on for a reason the user can fix (the message says which file and what to do)."""


MODEL_FILES = ("config.json", "model.safetensors")
MAX_BEAMS = 64


@dataclass
class DecodeConfig:
    # A model directory (BlspKdModel.save_pretrained output, an export), or an experiment dir holding model/.
    model_dir: str = ""
    # A complete stage-2 dump dir (feats.scp, text, utt2num_frames; optional continuation/translation/... files).
    dump_dir: str = ""
    # Where hyp.txt, hyp.jsonl, ... go (the recipe uses exp/<tag>/decode_<set>).
    out_dir: str = ""
    # A task of blspkd/tasks.py.
    task: str = "transcription"
    # Replaces the task's default instruction (any task).
    instruction: str | None = None
    # A text file whose whole content is the instruction (instead of ``instruction``).
    instruction_file: str | None = None
    # Target language named in the translation instruction, e.g. German.
    language: str | None = None
    batch_size: int = 8
    max_new_tokens: int = 128
    num_beams: int = 1
    length_penalty: float = 1.0
    repetition_penalty: float = 1.0
    no_repeat_ngram_size: int = 0
    # Tasks scored against the transcript (transcription, plain) only: at most ceil(max_len_ratio * N_hat +
    # max_len_offset) new tokens per utterance, N_hat = CIF's speech-token count (0 = off; max_new_tokens still caps).
    max_len_ratio: float = 0.0
    max_len_offset: int = 4
    device: str = "auto"  # auto | cpu | cuda | cuda:N
    num_shards: int = 1
    shard: int = 1
    # Merge the shards' outputs (no model is loaded). With num_shards 1, decoding merges by itself.
    merge: bool = False
    log_level: str = "INFO"


# ---- model -----------------------------------------------------------------------------------------------------------
def resolve_model_dir(path: str | Path) -> Path:
    """A model directory (config.json + model.safetensors), or an experiment dir whose final model is in ``model/``."""
    path = Path(path)
    if not path.is_dir():
        raise FileNotFoundError(f"model directory not found: {path}")
    for candidate in (path, path / "model"):
        if all((candidate / name).is_file() for name in MODEL_FILES):
            try:
                model_type = json.loads((candidate / "config.json").read_text(encoding="utf-8")).get("model_type")
            except (UnicodeDecodeError, ValueError, AttributeError) as e:
                raise DecodeError(f"{candidate}/config.json is not a JSON object ({e}): the model directory is "
                                  "damaged; re-run the training (or export) that wrote it") from None
            if model_type != "blspkd":
                raise DecodeError(f"{candidate}/config.json has model_type {model_type!r}, not 'blspkd': not a "
                                  "BLSP-KD model directory")
            return candidate
    hint = (" (training has checkpoints but has not finished: run the training stage to the end)"
            if (path / "checkpoints").is_dir() else "")
    raise FileNotFoundError(
        f"{path} is not a BLSP-KD model: neither {path}/{{config.json,model.safetensors}} nor "
        f"{path}/model/{{config.json,model.safetensors}} exist{hint}. Give an exp dir after training, its model/ "
        "subdirectory, or an exported directory"
    )


def pick_device(name: str) -> torch.device:
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise ConfigError(f"device '{name}' requested but CUDA is not available; use --device cpu")
    return torch.device(name)


def load_model(model_dir: str | Path, device: str = "auto"):
    """The model of ``model_dir`` (see ``resolve_model_dir``) in eval mode on ``device``."""
    from blspkd.models import BlspKdModel

    path = resolve_model_dir(model_dir)
    t0 = time.time()
    model = BlspKdModel.from_pretrained(str(path)).eval().to(pick_device(device))
    logger.info("loaded model %s in %.1f s (device %s)", path, time.time() - t0, next(model.parameters()).device)
    return model


def generation_kwargs(cfg) -> dict:
    """transformers ``generate`` arguments of a DecodeConfig (or anything with the same fields)."""
    if cfg.num_beams < 1 or cfg.max_new_tokens < 1:
        raise ConfigError(f"num_beams and max_new_tokens must be >= 1 (got {cfg.num_beams}, {cfg.max_new_tokens})")
    if cfg.num_beams > MAX_BEAMS:  # each beam holds its own KV cache: thousands of beams exhaust any memory
        raise ConfigError(f"num_beams must be at most {MAX_BEAMS}, got {cfg.num_beams}")
    kwargs = {"max_new_tokens": cfg.max_new_tokens, "num_beams": cfg.num_beams, "do_sample": False,
              "repetition_penalty": cfg.repetition_penalty, "no_repeat_ngram_size": cfg.no_repeat_ngram_size,
              # the LLM's own generation_config may carry sampling settings; decoding here is deterministic
              "temperature": None, "top_p": None, "top_k": None}
    if cfg.num_beams > 1:
        kwargs["length_penalty"] = cfg.length_penalty
    return kwargs


def length_cap_kwargs(cfg: DecodeConfig) -> dict:
    """``BlspKdModel.generate``'s per-utterance length cap for ``cfg.task``: empty when off or when the task's answer
    is not a restatement of the speech (continuations, answers: their length does not follow the speech's)."""
    if cfg.max_len_ratio < 0 or cfg.max_len_offset < 0:
        raise ConfigError(f"max_len_ratio and max_len_offset must be >= 0 (got {cfg.max_len_ratio}, "
                          f"{cfg.max_len_offset})")
    if cfg.max_len_ratio == 0 or tasks.get_task(cfg.task).reference != "text":
        return {}
    return {"max_len_ratio": cfg.max_len_ratio, "max_len_offset": cfg.max_len_offset}


def decode_kwargs(cfg: DecodeConfig) -> dict:
    """Every ``BlspKdModel.generate`` argument decoding passes (and records in its settings)."""
    return {**generation_kwargs(cfg), **length_cap_kwargs(cfg)}


def sha256_or_none(path: Path) -> str | None:
    from blspkd.scoring.scorer import sha256_file

    return sha256_file(path) if path.is_file() else None


# ---- task inputs -----------------------------------------------------------------------------------------------------
def utterance_instructions(cfg: DecodeConfig, dump: DumpDir) -> dict[str, str | None]:
    """The instruction of every utterance of ``dump`` for ``cfg.task`` (None: the model's default instruction)."""
    instruction = cfg.instruction
    if cfg.instruction_file:
        if instruction:
            raise ConfigError("give either instruction or instruction_file, not both")
        path = Path(cfg.instruction_file)
        if not path.is_file():
            raise ConfigError(f"instruction_file not found: {path}")
        instruction = path.read_text(encoding="utf-8").strip()
        if not instruction:
            raise ConfigError(f"instruction_file {path} is empty; write the instruction into it")
    per_utt_path = dump.path / "instruction"
    per_utt = read_kv(per_utt_path) if per_utt_path.is_file() else None
    return tasks.utterance_instructions(cfg.task, list(dump.text), per_utt, str(per_utt_path), instruction,
                                        language=cfg.language)


def references(task: str, dump_dir: Path) -> dict[str, str]:
    """The task's reference texts (may cover only some utterances, e.g. continuations after refusal filtering)."""
    path = dump_dir / tasks.get_task(task).reference
    return {k: v for k, v in read_kv(path).items() if v.strip()} if path.is_file() else {}


def decode_settings(cfg: DecodeConfig, model_dir: Path) -> dict:
    """Everything that determines the hypotheses: what decode_config.yaml records and shards must agree on."""
    settings = {k: v for k, v in asdict(cfg).items() if k not in ("shard", "merge", "log_level", "out_dir")}
    settings["model_dir"] = str(model_dir.resolve())
    settings["dump_dir"] = str(Path(cfg.dump_dir).resolve())
    settings["model_config_sha256"] = sha256_or_none(model_dir / "config.json")
    settings["model_weights_sha256"] = sha256_or_none(model_dir / "model.safetensors")
    settings["dump_fingerprint"] = dump_fingerprint(Path(cfg.dump_dir), cfg.task)
    settings["generate_kwargs"] = {k: v for k, v in decode_kwargs(cfg).items() if v is not None}
    return settings


def dump_fingerprint(dump_dir: Path, task: str) -> str:
    """sha256 of what the hypotheses and records depend on in the dump dir, so that a shard decoded before the dump
    dir was rebuilt (stage 2 or 3 re-run: new .completed marker) is decoded again rather than reused."""
    h = hashlib.sha256()
    for name in ("text", "feats.scp", "wav.scp", "utt2num_frames", "instruction", tasks.get_task(task).reference,
                 MARKER):
        path = dump_dir / name
        if path.is_file():
            h.update(f"{name} {path.stat().st_mtime_ns if name == MARKER else ''}\n".encode())
            h.update(path.read_bytes())
    return h.hexdigest()


# ---- one shard -------------------------------------------------------------------------------------------------------
def hyp_file(shards: Shards, shard: int) -> Path:
    return shards.dir / f"hyp.{shard}.jsonl"


def _check_dump_dir(path: Path) -> None:
    if not (path / MARKER).is_file():
        raise FileNotFoundError(f"{path}/{MARKER} not found: {path} is not a complete stage-2 dump dir "
                                "(run stage 2 of the recipe for this set)")


def decode_shard(cfg: DecodeConfig, model=None) -> dict:
    """Decode shard ``cfg.shard`` of ``cfg.num_shards``; returns its statistics. ``model``: an already loaded model
    (tests, or a caller decoding several sets); otherwise it is loaded from ``cfg.model_dir``."""
    if not 1 <= cfg.shard <= cfg.num_shards:
        raise ConfigError(f"shard must be in 1..num_shards={cfg.num_shards}, got {cfg.shard}")
    tasks.get_task(cfg.task)
    if cfg.batch_size < 1:
        raise ConfigError(f"batch_size must be >= 1, got {cfg.batch_size}")
    dump_path = Path(cfg.dump_dir)
    _check_dump_dir(dump_path)
    model_dir = resolve_model_dir(cfg.model_dir)
    settings = decode_settings(cfg, model_dir)
    shards = Shards(cfg.out_dir, cfg.num_shards)
    hyp_path = hyp_file(shards, cfg.shard)
    done = shards.done(cfg.shard, settings)
    if done is not None and hyp_path.is_file():
        logger.info("shard %d/%d already decoded with the same settings (%s); skipping", cfg.shard,
                    cfg.num_shards, shards.marker(cfg.shard))
        return done["stats"]

    dump = DumpDir.load(dump_path)
    keys = shard_keys(list(dump.text), cfg.shard, cfg.num_shards)
    instructions = utterance_instructions(cfg, dump)
    refs = references(cfg.task, dump_path)
    if model is None:
        model = load_model(model_dir, cfg.device)
    device = next(model.parameters()).device
    fe = model.feature_extractor
    log_mel = WhisperLogMel.from_extractor(fe)
    frame_seconds = fe.hop_length / fe.sampling_rate
    gen_kwargs = decode_kwargs(cfg)
    logger.info("shard %d/%d: %d of %d utterances of %s, task %s, batch %d, %s", cfg.shard, cfg.num_shards,
                len(keys), len(dump.text), dump_path, cfg.task, cfg.batch_size,
                {k: v for k, v in gen_kwargs.items() if v is not None})

    # Longest first, so similar lengths share a batch (less padding) and memory peaks at once rather than late.
    order = sorted(keys, key=lambda k: (-dump.num_frames[k], k))
    records: dict[str, dict] = {}
    stats = {"utterances": 0, "audio_seconds": 0.0, "seconds": 0.0, "generated_tokens": 0, "device": str(device),
             "batch_size": cfg.batch_size}
    for i in tqdm(range(0, len(order), cfg.batch_size), desc=f"decode shard {cfg.shard}", disable=None):
        batch = order[i: i + cfg.batch_size]
        feats = [torch.from_numpy(dump.feats[k].copy()) for k in batch]
        lengths = torch.tensor([f.shape[0] for f in feats])
        padded = torch.nn.utils.rnn.pad_sequence(feats, batch_first=True).to(device)
        t0 = time.perf_counter()
        if dump.raw:  # waveforms of a --feats_type raw dump dir: the log-mel is computed here, on the model's device
            padded, lengths = log_mel.batch(padded, lengths.to(device))
        out = model.generate(padded, lengths.to(device), [instructions[k] for k in batch], return_details=True,
                             **gen_kwargs)
        if device.type == "cuda":
            torch.cuda.synchronize(device)
        stats["seconds"] += time.perf_counter() - t0
        for j, key in enumerate(batch):
            instruction = instructions[key]
            records[key] = {
                "key": key,
                "instruction": instruction if instruction is not None else model.config.default_instruction,
                "hypothesis": one_line(out["texts"][j]),
                "reference": refs.get(key),
                "num_speech_tokens": out["num_speech_tokens"][j],
                "num_transcript_tokens": len(model.framing.transcript_ids(dump.text[key])),
                "num_generated_tokens": out["num_generated_tokens"][j],
            }
            stats["generated_tokens"] += out["num_generated_tokens"][j]
            stats["audio_seconds"] += int(lengths[j]) * frame_seconds
        stats["utterances"] += len(batch)

    hyp_path.parent.mkdir(parents=True, exist_ok=True)
    tmp = hyp_path.with_suffix(".jsonl.tmp")
    tmp.write_text("".join(json.dumps(records[k], ensure_ascii=False) + "\n" for k in sorted(records)),
                   encoding="utf-8")
    tmp.replace(hyp_path)
    shards.finish(cfg.shard, settings, stats=stats)
    _log_speed(f"shard {cfg.shard}/{cfg.num_shards}", stats)
    return stats


def _log_speed(what: str, stats: dict) -> None:
    logger.info("%s: %d utterances, %.1f s of audio decoded in %.1f s: real-time factor %.3f, %.1f generated "
                "tokens/s (%d tokens; device %s, batch %s)", what, stats["utterances"], stats["audio_seconds"],
                stats["seconds"], stats["seconds"] / max(stats["audio_seconds"], 1e-9),
                stats["generated_tokens"] / max(stats["seconds"], 1e-9), stats["generated_tokens"], stats["device"],
                stats["batch_size"])


# ---- merge -----------------------------------------------------------------------------------------------------------
def _versions() -> dict[str, str]:
    from blspkd.scoring.scorer import package_versions

    return package_versions(["torch", "transformers", "peft"])


def merge(cfg: DecodeConfig) -> Path:
    """Combine every shard of ``cfg.out_dir`` into the decode dir's files (see the module docstring)."""
    out_dir = Path(cfg.out_dir)
    _check_dump_dir(Path(cfg.dump_dir))
    all_keys = list(read_kv(Path(cfg.dump_dir) / "text"))
    records: dict[str, dict] = {}
    total = {"utterances": 0, "audio_seconds": 0.0, "seconds": 0.0, "generated_tokens": 0}
    devices, batch_sizes = set(), set()
    shards = Shards(out_dir, cfg.num_shards)
    try:
        markers = shards.collect(f"decode each missing shard J (--shard J --num_shards {cfg.num_shards}; its log "
                                 "says why it failed)")
    except ShardError as e:
        raise DecodeError(str(e)) from None
    settings = shards.signature()
    for j, marker in enumerate(markers, 1):
        for line in hyp_file(shards, j).read_text(encoding="utf-8").splitlines():
            rec = json.loads(line)
            records[rec["key"]] = rec
        for k in total:
            total[k] += marker["stats"][k]
        devices.add(marker["stats"]["device"])
        batch_sizes.add(marker["stats"]["batch_size"])
    missing = [k for k in all_keys if k not in records]
    if missing:
        raise DecodeError(f"{out_dir}/shards: {len(missing)} utterances of {cfg.dump_dir}/text were not decoded "
                           f"(first: {missing[0]}); were the shards run with num_shards={cfg.num_shards}?")
    keys = sorted(records)
    write_kv(out_dir / "hyp.txt", {k: records[k]["hypothesis"] for k in keys})
    refs = {k: records[k]["reference"] for k in keys if records[k]["reference"]}
    if refs:
        write_kv(out_dir / "ref.txt", refs)
    else:
        (out_dir / "ref.txt").unlink(missing_ok=True)
    with open(out_dir / "hyp.jsonl", "w", encoding="utf-8") as f:
        f.writelines(json.dumps(records[k], ensure_ascii=False) + "\n" for k in keys)
    import yaml

    (out_dir / "decode_config.yaml").write_text(
        yaml.safe_dump({**settings, "versions": _versions()}, sort_keys=False, allow_unicode=True), encoding="utf-8")
    stats = {**total, "device": ",".join(sorted(devices)), "batch_size": ",".join(map(str, sorted(batch_sizes))),
             "num_shards": cfg.num_shards,
             "real_time_factor": total["seconds"] / max(total["audio_seconds"], 1e-9),
             "generated_tokens_per_second": total["generated_tokens"] / max(total["seconds"], 1e-9)}
    (out_dir / "decode_stats.json").write_text(json.dumps(stats, indent=1) + "\n", encoding="utf-8")
    _log_speed(f"{out_dir} (sum over {cfg.num_shards} shard(s))", stats)
    n_speech = [records[k]["num_speech_tokens"] for k in keys]
    n_text = [records[k]["num_transcript_tokens"] for k in keys]
    exact = sum(a == b for a, b in zip(n_speech, n_text))
    logger.info("CIF token counts: %d predicted vs %d transcript tokens (ratio %.3f), exact for %d of %d utterances; "
                "%d of %d utterances have a reference (%s)", sum(n_speech), sum(n_text),
                sum(n_speech) / max(sum(n_text), 1), exact, len(keys), len(refs), len(keys),
                tasks.get_task(settings["task"]).reference)
    write_marker(out_dir / MARKER, settings, written=time.strftime("%Y-%m-%dT%H:%M:%S"))
    logger.info("wrote %s/{hyp.txt,hyp.jsonl,%sdecode_config.yaml,decode_stats.json}", out_dir,
                "ref.txt," if refs else "")
    return out_dir


def run(cfg: DecodeConfig, model=None) -> Path | None:
    """Decode (a shard, or all with num_shards 1) and/or merge, as the config says."""
    for name in ("model_dir", "dump_dir", "out_dir"):
        if not getattr(cfg, name) and not (cfg.merge and name == "model_dir"):
            raise ConfigError(f"{name} is required (--{name} ...)")
    if not cfg.merge:
        (Path(cfg.out_dir) / MARKER).unlink(missing_ok=True)
        decode_shard(cfg, model)
    if cfg.merge or cfg.num_shards == 1:
        return merge(cfg)
    return None
