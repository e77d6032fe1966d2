"""Benchmark: vectorised CIF (blspkd.models.cif.integrate_and_fire) against frame-by-frame loops.

Usage:
    python test/bench/bench_cif.py [--batch 8 --frames 1500 --dim 1280 --tokens 150 --device cpu --repeats 3]

Baselines:
* "frame loop (batched)": the reference implementations' shape, one Python iteration per frame over the whole batch
  (one fire per frame at most, which is exact here because every scaled alpha is below the threshold);
* "textbook loop": the per-utterance, per-frame loop of test/test_cif.py (also handles several fires per frame).
Outputs are checked against each other before timing.
"""
from __future__ import annotations

import argparse
import sys
import time
from pathlib import Path

import torch

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from test_cif import loop_cif  # noqa: E402

from blspkd.models.cif import integrate_and_fire  # noqa: E402


def frame_loop_cif(hidden, alphas, num_tokens, threshold=1.0):
    """Batched per-frame loop (FunASR/BLSP style): integrate, fire when the accumulator crosses the threshold."""
    b, t, c = hidden.shape
    scaled = alphas * (num_tokens / alphas.sum(1).clamp(min=1e-6)).unsqueeze(1)
    integrate = torch.zeros(b, device=hidden.device)
    frame = torch.zeros(b, c, device=hidden.device)
    fired = [[] for _ in range(b)]
    fires = torch.zeros(b, t, dtype=torch.bool, device=hidden.device)
    outs = torch.zeros(b, t, c, device=hidden.device)
    for i in range(t):
        a = scaled[:, i]
        dist = threshold - integrate
        integrate = integrate + a
        fire = integrate >= threshold
        cur = torch.where(fire, dist, a)
        remain = a - cur
        frame = frame + cur.unsqueeze(1) * hidden[:, i]
        outs[:, i] = frame
        fires[:, i] = fire
        integrate = torch.where(fire, integrate - threshold, integrate)
        frame = torch.where(fire.unsqueeze(1), remain.unsqueeze(1) * hidden[:, i], frame)
    for j in range(b):
        fired[j] = outs[j][fires[j]]
    n_max = int(num_tokens.max())
    tokens = torch.zeros(b, n_max, c, device=hidden.device)
    for j in range(b):
        k = int(num_tokens[j])
        # the last token takes what is left (it may have fired at the very end through rounding)
        tail = frame[j:j + 1] + (fired[j][k - 1:k] if len(fired[j]) >= k else 0)
        row = torch.cat([fired[j][: k - 1], tail])
        tokens[j, : row.shape[0]] = row
    return tokens


def timed(fn, repeats, device):
    best = float("inf")
    for _ in range(repeats):
        if device == "cuda":
            torch.cuda.synchronize()
        start = time.perf_counter()
        fn()
        if device == "cuda":
            torch.cuda.synchronize()
        best = min(best, time.perf_counter() - start)
    return best


def main():
    parser = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    parser.add_argument("--batch", type=int, default=8)
    parser.add_argument("--frames", type=int, default=1500)
    parser.add_argument("--dim", type=int, default=1280)
    parser.add_argument("--tokens", type=int, default=150)
    parser.add_argument("--device", default="cpu")
    parser.add_argument("--repeats", type=int, default=3)
    parser.add_argument("--skip_textbook", action="store_true", help="skip the slow per-utterance loop")
    args = parser.parse_args()
    torch.manual_seed(0)
    dev = args.device
    hidden = torch.randn(args.batch, args.frames, args.dim, device=dev)
    alphas = torch.rand(args.batch, args.frames, device=dev)
    num_tokens = torch.randint(args.tokens - 20, args.tokens + 21, (args.batch,), device=dev)

    vec = integrate_and_fire(hidden, alphas, num_tokens)[0]
    ref = frame_loop_cif(hidden, alphas, num_tokens.float())
    err = (vec - ref).abs().max().item()
    print(f"max |vectorised - frame loop| = {err:.2e}")
    t_vec = timed(lambda: integrate_and_fire(hidden, alphas, num_tokens), args.repeats, dev)
    t_loop = timed(lambda: frame_loop_cif(hidden, alphas, num_tokens.float()), args.repeats, dev)
    name = torch.cuda.get_device_name() if dev == "cuda" else f"CPU, {torch.get_num_threads()} threads"
    print(f"B={args.batch} T={args.frames} C={args.dim} N~{args.tokens} on {name}")
    print(f"vectorised:           {t_vec * 1000:9.1f} ms")
    print(f"frame loop (batched): {t_loop * 1000:9.1f} ms   ratio {t_loop / t_vec:6.1f}x")
    if not args.skip_textbook:
        t_text = timed(lambda: loop_cif(hidden.cpu(), alphas.cpu(), num_tokens.cpu()), 1, "cpu")
        print(f"textbook loop:        {t_text * 1000:9.1f} ms   ratio {t_text / t_vec:6.1f}x")


if __name__ == "__main__":
    main()
