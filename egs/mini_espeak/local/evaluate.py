"""Does the speech LLM listen? Before/after figures of one model on one dump dir.

Usage:
    # a trained model (an exp dir with model/, or a model dir)
    python local/evaluate.py --model exp/finetune --dump_dir dump/test --out_dir exp/eval/finetune_test
    # BEFORE training: the same architecture with a freshly initialised (untrained, seed 0) adapter
    python local/evaluate.py --untrained_config conf/warmstart.yaml --speech_encoder downloads/whisper-tiny.en \\
        --llm downloads/SmolLM2-135M-Instruct --dump_dir dump/test --out_dir exp/eval/untrained_test

Figures (written to ``<out_dir>/metrics.json`` and ``<out_dir>/report.md``):
  input_kl     KL(teacher || student) at ``--temperature`` (the KD loss, doc/method.md §5.1) on the transcript rows
               of the transcription prompt (``--instruction``),
               averaged over all rows of the set; the student gets the transcript's true token count N, as in training.
  agreement    fraction of transcript rows where the teacher's and the student's next-token argmax agree.
  cif_exact / cif_within1 / cif_rel_err
               CIF's predicted count N_hat = max(1, round(sum alpha)) vs N: exact, |N_hat - N| <= 1, mean |N_hat-N|/N.
  emb_cos / emb_norm_ratio / emb_nearest_acc
               speech vector k against the LLM input embedding of transcript token k: mean cosine, mean norm ratio,
               fraction whose nearest embedding (cosine) is that token.
  wer          greedy speech-input transcription WER, through the recipe's own CLIs: ``python -m blspkd.bin.decode``
               (``--decode_config``, task transcription) then ``python -m blspkd.bin.score`` (stage 7's normaliser).
  samples      the first ``--num_samples`` hypotheses beside their references.
"""
from __future__ import annotations

import argparse
import json
import logging
import os
import subprocess
import sys
import time
from pathlib import Path

import torch

from blspkd.data.collate import BlspKdCollator
from blspkd.models.configuration_blspkd import LossWeights
from blspkd.train.config import TaskConfig
from blspkd.train.dataset import TrainingData, task_instruction
from blspkd.utils.logging import setup_logging

log = logging.getLogger("evaluate")


def build_untrained(config_yaml: str, speech_encoder: str, llm: str, out: Path) -> Path:
    """Save the model of a training config with its freshly initialised adapter (what training starts from)."""
    from blspkd.train.config import TrainConfig
    from blspkd.train.trainer import build_model
    from blspkd.utils.config import parse_config

    cfg = parse_config(TrainConfig, ["--config", config_yaml, "--init_from", "null", "--model.speech_encoder",
                                     speech_encoder, "--model.llm", llm])
    torch.manual_seed(cfg.seed)
    model = build_model(cfg)
    model.save_pretrained(out)
    log.info("untrained model of %s (seed %d) saved to %s", config_yaml, cfg.seed, out)
    return out


@torch.no_grad()
def listening_metrics(model, dump_dir: str, batch_size: int, temperature: float,
                      instruction: str | None = None) -> dict[str, float]:
    """input_kl, agreement, CIF count and embedding-space figures over every utterance of ``dump_dir``, with the
    transcript framed by ``instruction`` (the prompt the model was trained and is decoded with)."""
    data = TrainingData([dump_dir], [TaskConfig(kind="plain", instruction=instruction)], "frames")
    examples = sorted(data.all_examples(), key=lambda e: data.lengths[e[0]][e[1]])  # similar lengths batch together
    collate = BlspKdCollator(model.tokenizer, model.config)
    saved_losses, saved_t = model.config.losses, model.config.temperature
    model.config.losses, model.config.temperature = LossWeights(input_kl=1.0, cif=1.0), temperature
    emb = model.llm.get_input_embeddings().weight.float()
    emb_unit = torch.nn.functional.normalize(emb, dim=-1)
    sums = dict.fromkeys(["kl", "agree", "rows", "exact", "within1", "rel_err", "utts", "cos", "norm_ratio",
                          "nearest"], 0.0)
    try:
        for i in range(0, len(examples), batch_size):
            batch = collate([data[x] for x in examples[i:i + batch_size]])
            out = model(**batch)
            rows = float(batch["transcript_mask"].sum())
            sums["kl"] += float(out["input_kl"]) * rows
            sums["agree"] += out["stats"]["agreement"] * rows
            sums["rows"] += rows
            n = batch["num_tokens"]
            predicted = model.encode_speech(batch["feats"], batch["feats_lengths"]).num_tokens
            sums["exact"] += float((predicted == n).sum())
            sums["within1"] += float(((predicted - n).abs() <= 1).sum())
            sums["rel_err"] += float(((predicted - n).abs().float() / n.float()).sum())
            sums["utts"] += len(n)
            forced = model.encode_speech(batch["feats"], batch["feats_lengths"], n)
            vec = forced.embeds[forced.mask].float()
            target = batch["input_ids"][batch["transcript_mask"]]
            sums["cos"] += float(torch.nn.functional.cosine_similarity(vec, emb[target], dim=-1).sum())
            sums["norm_ratio"] += float((vec.norm(dim=-1) / emb[target].norm(dim=-1)).sum())
            nearest = (torch.nn.functional.normalize(vec, dim=-1) @ emb_unit.T).argmax(-1)
            sums["nearest"] += float((nearest == target).sum())
    finally:
        model.config.losses, model.config.temperature = saved_losses, saved_t
    r, u = max(sums["rows"], 1.0), max(sums["utts"], 1.0)
    return {"input_kl": sums["kl"] / r, "agreement": sums["agree"] / r, "cif_exact": sums["exact"] / u,
            "cif_within1": sums["within1"] / u, "cif_rel_err": sums["rel_err"] / u, "emb_cos": sums["cos"] / r,
            "emb_norm_ratio": sums["norm_ratio"] / r, "emb_nearest_acc": sums["nearest"] / r,
            "num_utts": int(sums["utts"]), "num_rows": int(sums["rows"])}


def run_cli(args: list[str], log_path: Path) -> None:
    """One of the recipe's CLIs; on failure the error names its log."""
    log_path.parent.mkdir(parents=True, exist_ok=True)
    with open(log_path, "w", encoding="utf-8") as f:
        rc = subprocess.call([sys.executable, "-m", *args], stdout=f, stderr=subprocess.STDOUT)
    if rc != 0:
        raise SystemExit(f"'python -m {' '.join(args)}' failed (exit {rc}); see {log_path}")


def transcription_wer(model_dir: Path, dump_dir: str, out: Path, decode_config: str | None,
                      instruction: str | None) -> tuple[float, list[dict]]:
    ddir = out / "decode_transcription"
    cmd = ["blspkd.bin.decode", *(["--config", decode_config] if decode_config else []), "--model_dir",
           str(model_dir), "--dump_dir", dump_dir, "--out_dir", str(ddir), "--task", "transcription"]
    if instruction:
        cmd += ["--instruction", instruction]
    run_cli(cmd, out / "log" / "decode.log")
    run_cli(["blspkd.bin.score", "--ref", str(ddir / "ref.txt"), "--hyp", str(ddir / "hyp.txt"), "--metric", "wer",
             "--lang", "en", "--out_dir", str(ddir)], out / "log" / "score.log")
    result = json.loads((ddir / "result.json").read_text(encoding="utf-8"))
    wer = _find_wer(result)
    records = [json.loads(line) for line in (ddir / "hyp.jsonl").read_text(encoding="utf-8").splitlines() if line]
    return wer, records


def _find_wer(result: dict) -> float:
    """The WER (a fraction) from score's result.json, wherever its format keeps it."""
    for key in ("scores", "metrics"):
        if isinstance(result.get(key), dict) and isinstance(result[key].get("wer"), dict):
            return result[key]["wer"]["score"] / 100.0
    if isinstance(result.get("wer"), dict):
        return result["wer"]["score"] / 100.0
    raise SystemExit(f"no WER in result.json: keys {sorted(result)}")


def write_report(out: Path, name: str, metrics: dict, samples: list[dict]) -> None:
    lines = [f"### {name}", "", "| input_kl | agreement | CIF exact / within 1 / rel. err | emb cos / norm ratio / "
             "nearest | WER |", "|---|---|---|---|---|",
             f"| {metrics['input_kl']:.3f} | {metrics['agreement']:.3f} | {metrics['cif_exact']:.2f} / "
             f"{metrics['cif_within1']:.2f} / {metrics['cif_rel_err']:.3f} | {metrics['emb_cos']:.3f} / "
             f"{metrics['emb_norm_ratio']:.2f} / {metrics['emb_nearest_acc']:.3f} | {metrics['wer']:.3f} |", ""]
    for s in samples:
        lines += [f"- `{s['key']}` ref: {s.get('reference', '')}", f"  hyp: {s.get('hypothesis', '')}"]
    (out / "report.md").write_text("\n".join(lines) + "\n", encoding="utf-8")


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0], formatter_class=argparse.RawTextHelpFormatter)
    p.add_argument("--model", help="trained model: exp dir (with model/) or model dir")
    p.add_argument("--untrained_config", help="instead of --model: a training YAML whose fresh adapter is evaluated")
    p.add_argument("--speech_encoder", help="with --untrained_config: the Whisper model dir")
    p.add_argument("--llm", help="with --untrained_config: the LLM dir")
    p.add_argument("--dump_dir", required=True)
    p.add_argument("--out_dir", required=True)
    p.add_argument("--decode_config", default="conf/decode.yaml", help="decode YAML ('' for the defaults)")
    p.add_argument("--instruction", default=None,
                   help="transcription instruction for decoding and for framing input_kl/agreement\n"
                        "(default: the transcription task's, as in training and conf/decode.yaml)")
    p.add_argument("--batch_size", type=int, default=16)
    p.add_argument("--temperature", type=float, default=2.0, help="KD temperature of input_kl (the training one)")
    p.add_argument("--num_samples", type=int, default=5)
    args = p.parse_args(argv)
    setup_logging()
    if bool(args.model) == bool(args.untrained_config):
        p.error("give exactly one of --model and --untrained_config")
    if args.untrained_config and not (args.speech_encoder and args.llm):
        p.error("--untrained_config needs --speech_encoder and --llm")
    os.environ.setdefault("HF_HUB_OFFLINE", "1")
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    from blspkd.decode import load_model, resolve_model_dir

    model_dir = (build_untrained(args.untrained_config, args.speech_encoder, args.llm, out / "model")
                 if args.untrained_config else resolve_model_dir(args.model))
    t0 = time.time()
    model = load_model(model_dir, "cpu" if not torch.cuda.is_available() else "auto")
    instruction = args.instruction or task_instruction(TaskConfig(kind="transcription"))
    metrics = listening_metrics(model, args.dump_dir, args.batch_size, args.temperature, instruction)
    del model
    metrics["listening_seconds"] = round(time.time() - t0, 1)
    t0 = time.time()
    metrics["wer"], records = transcription_wer(model_dir, args.dump_dir, out, args.decode_config or None,
                                                args.instruction)
    metrics["decode_seconds"] = round(time.time() - t0, 1)
    metrics["model_dir"] = str(model_dir)
    metrics["dump_dir"] = args.dump_dir
    (out / "metrics.json").write_text(json.dumps(metrics, indent=2) + "\n", encoding="utf-8")
    name = f"{args.model or 'untrained ' + args.untrained_config} on {args.dump_dir}"
    write_report(out, name, metrics, records[: args.num_samples])
    log.info("%s: %s", name, ", ".join(f"{k} {v:.4f}" if isinstance(v, float) else f"{k} {v}"
                                         for k, v in metrics.items()))


if __name__ == "__main__":
    main(sys.argv[1:])
