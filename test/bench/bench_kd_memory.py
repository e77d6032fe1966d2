"""Benchmark: peak memory of the KD loss with logits on the selected rows only vs the naive full-sequence logits.

Usage:
    python test/bench/bench_kd_memory.py [--batch 4 --length 160 --rows_per_seq 40 --vocab 151936 --device cpu]

BlspKdModel gathers the final hidden states of the rows a loss uses and only then applies the output head, so the
teacher and student logits are R x V (R = transcript rows of the batch) instead of the B x L x V that
``llm(...).logits`` returns (and that stays referenced by the outputs while the loss is computed). Each variant
(teacher logits without grad, student logits with grad, kd_kl, backward) runs in its own subprocess; the figure is the
peak resident memory above the memory held before the loss (on CUDA: torch.cuda.max_memory_allocated above the start).
The analytic fp32 size of one logits tensor is printed beside it, and the two variants' losses and gradients are
checked to agree.
"""
from __future__ import annotations

import argparse
import json
import resource
import subprocess
import sys
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[2]))
from blspkd.losses import kd_kl  # noqa: E402


def rss_mb() -> float:
    for line in open("/proc/self/status"):
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError("no VmRSS in /proc/self/status")


def run_variant(args) -> dict:
    dev = args.device
    torch.manual_seed(0)
    head = torch.randn(args.vocab, args.hidden, device=dev) * 0.05
    h_teacher = torch.randn(args.batch, args.length, args.hidden, device=dev)
    h_student = torch.randn(args.batch, args.length, args.hidden, device=dev, requires_grad=True)
    rows = torch.zeros(args.batch, args.length, dtype=torch.bool, device=dev)
    for b in range(args.batch):
        start = 31 + 3 * b  # after a chat prefix of about SmolLM2's 31 tokens
        rows[b, start:start + args.rows_per_seq] = True
    if dev == "cuda":
        torch.cuda.synchronize()
        torch.cuda.reset_peak_memory_stats()
        before = torch.cuda.memory_allocated() / 2**20
    else:
        before = rss_mb()
    if args.variant == "naive":  # what `llm(...).logits` gives: B x L x V, held by the model outputs during the loss
        with torch.no_grad():
            full_t = h_teacher @ head.T
        full_s = h_student @ head.T
        z_t, z_s = full_t[rows], full_s[rows]
    else:
        with torch.no_grad():
            z_t = h_teacher[rows] @ head.T
        z_s = h_student[rows] @ head.T
    loss = kd_kl(z_s, z_t, 2.0)
    loss.backward()
    if args.variant == "naive":
        del full_t, full_s  # alive until here, as the outputs of a forward that returned full logits would be
    if dev == "cuda":
        torch.cuda.synchronize()
        peak = torch.cuda.max_memory_allocated() / 2**20 - before
    else:
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024 - before
    return {"peak_mb": peak, "loss": loss.item(), "grad_norm": h_student.grad.norm().item()}


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=4)
    parser.add_argument("--length", type=int, default=160)
    parser.add_argument("--rows_per_seq", type=int, default=40)
    parser.add_argument("--vocab", type=int, default=151936, help="Qwen2's 151,936-token vocabulary")
    parser.add_argument("--hidden", type=int, default=64, help="small: the logits memory does not depend on it")
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--variant", choices=["naive", "rows"], help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.variant:
        print(json.dumps(run_variant(args)))
        return
    results = {}
    for variant in ("naive", "rows"):
        cmd = [sys.executable, __file__, *sys.argv[1:], "--variant", variant]
        results[variant] = json.loads(subprocess.run(cmd, check=True, capture_output=True, text=True).stdout)
    r = args.batch * args.rows_per_seq
    full_mb = args.batch * args.length * args.vocab * 4 / 2**20
    rows_mb = r * args.vocab * 4 / 2**20
    print(f"B={args.batch} L={args.length} R={r} rows V={args.vocab} on {args.device}")
    print(f"one fp32 logits tensor: full sequence {full_mb:8.1f} MiB, selected rows {rows_mb:8.1f} MiB")
    for variant, res in results.items():
        print(f"{variant:5s}: peak {res['peak_mb']:8.1f} MiB above start   loss {res['loss']:.6f}   "
              f"|grad| {res['grad_norm']:.6f}")
    ratio = results["naive"]["peak_mb"] / max(results["rows"]["peak_mb"], 1e-9)
    same = abs(results["naive"]["loss"] - results["rows"]["loss"]) <= 1e-5 * abs(results["naive"]["loss"])
    print(f"naive / rows peak ratio: {ratio:.1f}x   (losses agree: {same})")
    paper = 8 * 512 * args.vocab * 4 / 2**30
    print(f"for scale: B=8, L=512, V={args.vocab}: one full fp32 logits tensor is {paper:.1f} GiB; the KD needs "
          "teacher + student + their log-softmax copies + the student's gradient")


if __name__ == "__main__":
    main()
