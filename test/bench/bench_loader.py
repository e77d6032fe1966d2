"""Stage-2 cost and training-loader throughput of ``--feats_type fbank`` (80 and 128 bins) against ``raw``.

What it does, on a synthetic corpus with LibriSpeech's utterance lengths (log-normal around 12.3 s, 1-30 s; each
utterance is espeak-ng speech clips laid end to end over -60 dB noise, so FLAC compresses it as it compresses speech):

1. Stage 2 (``extract_shard`` + ``merge_shards``, one process, one thread) for fbank-80, fbank-128 and raw (FLAC, WAV):
   seconds of stage-2 time per hour of audio and dump size per hour, both scaled to 100 h of speech.
2. The training loader exactly as the trainer builds it (``TrainingData`` + ``BucketBatchSampler`` + ``BlspKdCollator``
   in a ``DataLoader``) at the batch settings of ``--config`` (librispeech: batch_bins 72000, 24 utterances a batch,
   continuation task), for each ``--workers`` count: utterances/s in all and per worker. For raw, the log-mel that the
   GPU then computes (``WhisperLogMel.batch``) is timed here on the CPU as an upper bound of its cost.
3. One GPU's consumption at the paper-scale model (Whisper-large-v2 encoder + CFormer + Qwen2.5-7B, KD pretraining):
   from ``--gpu_utt_s`` when a measured figure exists (bench_train.py's utt/s on that GPU), else from a FLOP estimate
   (printed with its assumptions: peak bf16 TFLOP/s x ``--mfu``). Prints the workers one GPU needs for a loader at
   3x its consumption.

Usage:
    python test/bench/bench_loader.py --hours 0.25 --workers 1 2 --out /tmp/bench_loader
    python test/bench/bench_loader.py --hours 1 --workers 1 2 4 --gpu_utt_s 31.5   # a measured consumption rate

Run it on an otherwise idle machine: every figure is a wall-clock rate.
"""
from __future__ import annotations

import argparse
import math
import shutil
import subprocess
import sys
import tempfile
import time
from pathlib import Path

import numpy as np

REPO = Path(__file__).resolve().parents[2]
sys.path.insert(0, str(REPO / "test"))

WORDS = ("the speech model listens to the audio and the teacher reads the words of every sentence while the student "
         "hears them spoken aloud in a quiet room near the sea shore").split()
# Paper-scale shapes (config.json of openai/whisper-large-v2 and Qwen/Qwen2.5-7B-Instruct).
WHISPER = {"d": 1280, "layers": 32, "ffn": 5120}
QWEN = {"h": 3584, "layers": 28, "inter": 18944, "kv": 512, "vocab": 152064}
VARIANTS = (("fbank-80", 80, "fbank", ""), ("fbank-128", 128, "fbank", ""), ("raw-flac", 80, "raw", "flac"),
            ("raw-wav", 80, "raw", "wav"))
PEAK_TFLOPS = {"A100 80GB": 312.0, "H100 SXM": 989.0}  # dense bf16


def make_corpus(root: Path, hours: float, seed: int) -> Path:
    """Data dir ``root/data`` of 16 kHz 16-bit WAVs with LibriSpeech-like lengths, texts of ~2.7 words/s."""
    import soundfile as sf

    from blspkd.data.kaldi_dir import write_data_dir

    rng = np.random.default_rng(seed)
    clips = []
    for i in range(12):
        with tempfile.NamedTemporaryFile(suffix=".wav") as tmp:
            text = " ".join(rng.choice(WORDS, size=8))
            subprocess.run(["espeak-ng", "-v", ["en-us", "en-gb", "en-us+f3"][i % 3], "-w", tmp.name, text],
                           check=True, capture_output=True)
            subprocess.run(["sox", tmp.name, "-r", "16000", "-b", "16", str(root / f"clip{i}.wav")], check=True)
        clips.append(sf.read(root / f"clip{i}.wav", dtype="float32")[0])
    wav, text, utt2spk = {}, {}, {}
    total, i = 0.0, 0
    while total < hours * 3600:
        seconds = float(np.clip(rng.lognormal(math.log(12.3), 0.45), 1.0, 30.0))
        n = int(seconds * 16000)
        parts, have = [], 0
        while have < n:
            clip = clips[rng.integers(len(clips))]
            parts += [clip, np.zeros(int(rng.uniform(0.1, 0.5) * 16000), np.float32)]
            have += len(clip) + len(parts[-1])
        x = np.concatenate(parts)[:n] + 1e-3 * rng.standard_normal(n).astype(np.float32)
        utt = f"spk{i % 20:02d}-utt{i:05d}"
        path = root / "wav" / f"{utt}.wav"
        path.parent.mkdir(parents=True, exist_ok=True)
        sf.write(path, x, 16000, subtype="PCM_16")
        wav[utt], utt2spk[utt] = str(path), utt.split("-")[0]
        text[utt] = " ".join(rng.choice(WORDS, size=max(1, round(2.7 * seconds))))
        total += seconds
        i += 1
    return write_data_dir(root / "data", utt2spk, **{"wav.scp": wav}, text=text)


def du(path: Path) -> int:
    return sum(p.stat().st_size for p in path.rglob("*") if p.is_file())


def stage2(data: Path, out: Path, fe_dir: Path, feats_type: str, audio_format: str) -> tuple[float, int, float]:
    """(stage-2 seconds, dump bytes, hours of audio) of one extract + merge."""
    from blspkd.data.feature_dump import extract_shard, merge_shards

    start = time.perf_counter()
    stats = extract_shard(data, out, fe_dir, 1, 1, min_duration=0.1, max_duration=30.0, feats_type=feats_type,
                          audio_format=audio_format)
    merge_shards(data, out, 1)
    return time.perf_counter() - start, du(out / "shards"), stats["audio_seconds"] / 3600


def loader_rate(dump: Path, tokenizer_dir: Path, config: Path, workers: int, epochs: int) -> tuple[float, int]:
    """(utterances/s, utterances) of the trainer's DataLoader over ``dump`` with ``config``'s batch settings."""
    from torch.utils.data import DataLoader
    from transformers import AutoTokenizer

    from blspkd.data.collate import BlspKdCollator
    from blspkd.models import BlspKdConfig
    from blspkd.train.config import TrainConfig
    from blspkd.train.dataset import TrainingData
    from blspkd.train.sampler import BucketBatchSampler
    from blspkd.utils.config import from_yaml_file

    cfg = from_yaml_file(TrainConfig, config).data
    data = TrainingData([dump], cfg.tasks, cfg.batch_type)
    sampler = BucketBatchSampler(data.lengths, [1.0], data.eligible, [t.weight for t in cfg.tasks], cfg.batch_bins,
                                 cfg.max_batch_size, seed=0)
    collate = BlspKdCollator(AutoTokenizer.from_pretrained(tokenizer_dir), BlspKdConfig())
    n = 0
    start = None
    for epoch in range(epochs + 1):  # epoch 0 warms the page cache and starts the workers
        if epoch == 1:
            start = time.perf_counter()
        sampler.set_epoch(epoch)
        loader = DataLoader(data, batch_sampler=sampler, collate_fn=collate, num_workers=workers,
                            persistent_workers=False)
        for batch in loader:
            if epoch:
                n += int(batch["input_ids"].shape[0])
    return n / (time.perf_counter() - start), n


def device_mel_seconds(dump: Path, fe_dir: Path, device: str, batch: int = 24) -> float:
    """Seconds of WhisperLogMel.batch per utterance on ``device`` over the raw dump (one CPU thread)."""
    import torch

    from blspkd.data.audio_dump import RawAudio
    from blspkd.data.mel import WhisperLogMel

    mel = WhisperLogMel.from_pretrained(fe_dir)
    audio = RawAudio(dump)
    keys = sorted(audio)[: 4 * batch]
    torch.set_num_threads(1)
    batches = []
    for i in range(0, len(keys), batch):
        waves = [torch.from_numpy(audio[k]) for k in keys[i: i + batch]]
        batches.append((torch.nn.utils.rnn.pad_sequence(waves, batch_first=True).to(device),
                        torch.tensor([len(w) for w in waves], device=device)))
    mel.batch(*batches[0])  # warm-up (CUDA context, FFT plans)
    sync = torch.cuda.synchronize if device == "cuda" else (lambda: None)
    sync()
    start = time.perf_counter()
    for speech, lengths in batches:
        mel.batch(speech, lengths)
    sync()
    return (time.perf_counter() - start) / len(keys)


def kd_flops_per_utterance(seconds: float, transcript: int, prompt: int, response: int) -> float:
    """Training FLOPs of one utterance at the paper shapes (frozen encoder and LLM, KD pretraining, no PLoRA):
    encoder forward on seconds*50 positions; the 8-layer CFormer forward+backward (x3); the LLM teacher pass (forward)
    and student pass (forward + backward to the speech positions: x2, no weight gradients), each over
    prompt+transcript+response tokens; the vocabulary head on transcript+response rows (teacher x1, student x2)."""
    w, q = WHISPER, QWEN
    t = seconds * 50
    enc = w["layers"] * (2 * (4 * w["d"] ** 2 + 2 * w["d"] * w["ffn"]) * t + 4 * t * t * w["d"])
    adapter = 3 * 8 * 2 * (4 * w["d"] ** 2 + 2 * w["d"] * w["ffn"]) * t
    length = prompt + transcript + response
    layer = 2 * (2 * q["h"] ** 2 + 2 * q["h"] * q["kv"] + 3 * q["h"] * q["inter"]) * length + 4 * length ** 2 * q["h"]
    llm = (1 + 2) * q["layers"] * layer
    head = (1 + 2) * 2 * q["h"] * q["vocab"] * (transcript + response)
    return enc + adapter + llm + head


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--hours", type=float, default=0.25, help="hours of synthetic audio (default 0.25)")
    p.add_argument("--workers", type=int, nargs="+", default=[1, 2])
    p.add_argument("--epochs", type=int, default=2, help="timed passes over the data per loader measurement")
    p.add_argument("--config", type=Path, default=REPO / "egs/librispeech/conf/pretrain.yaml")
    p.add_argument("--tokenizer", type=Path, default=None,
                   help="tokenizer dir for the collator (default: the tiny Qwen2 test tokenizer, ~2x Qwen's tokens)")
    p.add_argument("--gpu_utt_s", type=float, default=None, help="measured utt/s of one GPU (bench_train.py)")
    p.add_argument("--mfu", type=float, default=0.4, help="model FLOP utilisation of the estimate (default 0.4)")
    p.add_argument("--response_tokens", type=int, default=48, help="teacher continuation length (stage 3 default)")
    p.add_argument("--out", type=Path, default=Path("/tmp/bench_loader"))
    args = p.parse_args()
    from fixtures.tiny_models import build_tiny_llm
    from transformers import WhisperFeatureExtractor

    from blspkd.data.kaldi_dir import read_kv, write_kv

    if args.out.exists():
        shutil.rmtree(args.out)
    args.out.mkdir(parents=True)
    data = make_corpus(args.out, args.hours, seed=0)
    texts = read_kv(data / "text")
    write_kv(data / "continuation", {k: " ".join(v.split()[:20]) for k, v in texts.items()})
    tokenizer = args.tokenizer or build_tiny_llm(args.out / "tiny_qwen2", "qwen2")
    fe = {}
    for bins in (80, 128):
        fe[bins] = args.out / f"fe{bins}"
        WhisperFeatureExtractor(feature_size=bins).save_pretrained(str(fe[bins]))

    print(f"corpus: {len(texts)} utterances; config {args.config}; stage 2 in 1 process x 1 thread")
    dumps, rates = {}, {}
    for name, bins, kind, fmt in VARIANTS:
        dumps[name] = args.out / f"dump_{name}"
        seconds, size, hours = stage2(data, dumps[name], fe[bins], kind, fmt)
        print(f"stage 2 {name:>9}: {seconds / hours / 60:6.2f} min per hour of audio = "
              f"{seconds / hours * 100 / 3600:5.2f} core-hours per 100 h; dump {size / hours / 1e9 * 100:6.1f} GB per "
              "100 h")
    for name in dumps:
        for w in args.workers:
            rate, n = loader_rate(dumps[name], tokenizer, args.config, w, args.epochs)
            rates[(name, w)] = rate
            print(f"loader {name:>9}, {w} worker(s): {rate:7.1f} utt/s = {rate / w:7.1f} utt/s per worker ({n} utts)")
    import torch

    for device in ("cpu", "cuda") if torch.cuda.is_available() else ("cpu",):
        mel_s = device_mel_seconds(dumps["raw-flac"], fe[80], device)
        print(f"raw: the batched log-mel (batches of 24) costs {mel_s * 1e3:.2f} ms per utterance on {device}"
              + (" (1 thread)" if device == "cpu" else f" ({torch.cuda.get_device_name()})"))

    mean_s = float(np.mean([int(v) for v in read_kv(dumps["fbank-80"] / "utt2num_frames").values()])) / 100
    transcript = round(2.7 * mean_s * 1.3)  # ~1.3 Qwen tokens per English word
    flops = kd_flops_per_utterance(mean_s, transcript, prompt=40, response=args.response_tokens)
    print(f"consumption estimate: {flops / 1e12:.2f} TFLOP per utterance (mean {mean_s:.1f} s, {transcript} transcript "
          f"+ 40 prompt + {args.response_tokens} response tokens; frozen encoder and LLM, KD pretraining)")
    gpus = {f"{g} at {args.mfu:.0%} MFU (estimate)": peak * 1e12 * args.mfu / flops for g, peak in PEAK_TFLOPS.items()}
    if args.gpu_utt_s:
        gpus["measured (--gpu_utt_s)"] = args.gpu_utt_s
    for gpu, need in gpus.items():
        for name in dumps:
            per_worker = max(rates[(name, w)] / w for w in args.workers)
            workers = math.ceil(3 * need / per_worker)
            print(f"{gpu}: {need:6.1f} utt/s per GPU; {name} loader at 3x needs {workers} worker(s) per GPU")


if __name__ == "__main__":
    main()
