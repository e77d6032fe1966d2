"""The speech encoder's own reference: its Whisper decoder, untrained on the recipe's voices, transcribes a data dir.

Usage:
    python local/whisper_reference.py --whisper downloads/whisper-tiny.en --data_dir data/test \\
        --out_dir exp/whisper_reference/decode_test
    python -m blspkd.bin.score --ref data/test/text --hyp exp/whisper_reference/decode_test/hyp.txt \\
        --metric wer,cer --lang en --out_dir exp/whisper_reference/decode_test

The speech model reads the same encoder's outputs (frozen), so this WER says how much of the words the encoder's
representation of these voices gives the decoder it was trained with (README "What the encoder gives its own
decoder"). Greedy decoding with the model's generation_config.json (Whisper's defaults, no temperature fallback: its
repetition loops stay in and count as insertions). Audio longer than Whisper's 30 s window is cut to it, and counted
in the log. Writes ``<out_dir>/hyp.txt`` (``<uttid> <text>`` lines, sorted by utterance id).
"""
from __future__ import annotations

import argparse
import logging
from pathlib import Path

import torch
from tqdm import tqdm
from transformers import WhisperForConditionalGeneration, WhisperProcessor

from blspkd.data.audio import AudioReader
from blspkd.data.kaldi_dir import write_kv

logger = logging.getLogger("whisper_reference")
WINDOW_SECONDS = 30  # Whisper's input window


def transcribe(whisper_dir: str, data_dir: str, batch_size: int = 16, max_new_tokens: int = 128) -> dict[str, str]:
    processor = WhisperProcessor.from_pretrained(whisper_dir)
    model = WhisperForConditionalGeneration.from_pretrained(whisper_dir).eval()
    rate = processor.feature_extractor.sampling_rate
    reader = AudioReader(data_dir, sample_rate=rate)
    utts = reader.utterances()
    hyps: dict[str, str] = {}
    cut = 0
    batches = [utts[i:i + batch_size] for i in range(0, len(utts), batch_size)]
    for batch in tqdm(batches, desc=f"whisper {Path(data_dir).name}", unit="batch"):
        waves = [wave for _, wave in reader.iter(batch)]
        cut += sum(len(w) > WINDOW_SECONDS * rate for w in waves)
        feats = processor(waves, sampling_rate=rate, return_tensors="pt").input_features
        with torch.inference_mode():
            tokens = model.generate(feats, max_new_tokens=max_new_tokens)
        hyps.update(zip(batch, (t.strip() for t in processor.batch_decode(tokens, skip_special_tokens=True))))
    logger.info("%s: %d utterances transcribed; %d longer than %d s were cut to it", data_dir, len(hyps), cut,
                WINDOW_SECONDS)
    return hyps


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--whisper", required=True, help="a Hugging Face Whisper directory (encoder and decoder)")
    parser.add_argument("--data_dir", required=True, help="a Kaldi data dir with wav.scp")
    parser.add_argument("--out_dir", required=True, help="where hyp.txt is written")
    parser.add_argument("--batch_size", type=int, default=16)
    parser.add_argument("--max_new_tokens", type=int, default=128)
    args = parser.parse_args(argv)
    logging.basicConfig(level=logging.INFO, format="%(asctime)s %(name)s %(levelname)s: %(message)s")
    hyps = transcribe(args.whisper, args.data_dir, args.batch_size, args.max_new_tokens)
    out = Path(args.out_dir)
    out.mkdir(parents=True, exist_ok=True)
    write_kv(out / "hyp.txt", hyps)
    logger.info("wrote %s", out / "hyp.txt")


if __name__ == "__main__":
    main()
