"""Where a training update's time goes: a short real training run under torch.profiler, its operators grouped.

Runs ``python -m blspkd.bin.train`` in this process with the given config and options for ``--steps`` updates,
profiles the updates after the first ``--skip`` (schedule stepped by the optimiser's step hook, so model loading and
the first updates' warm-up are left out), and prints the CPU time per update of the most expensive operators and of
operator groups (matrix products, attention, softmax/log-softmax and losses, normalisation, elementwise, autograd
bookkeeping, the rest). Figures are shares of the profiled time, so they keep their meaning on a loaded machine,
but time it idle for absolute figures.

Usage (from a recipe dir after its stages 0-3, e.g. egs/mini_espeak):
    python ../../test/bench/profile_train.py --steps 12 --skip 4 --out /tmp/profile_finetune -- \
        --config conf/finetune.yaml --model.speech_encoder downloads/whisper-tiny.en \
        --model.llm downloads/SmolLM2-135M-Instruct --data.train "[{path: dump/train}]" --data.valid "[]"
"""
from __future__ import annotations

import argparse
from collections import defaultdict
from pathlib import Path

GROUPS = (
    ("matrix products", ("mm", "addmm", "bmm", "matmul", "linear", "baddbmm", "_mkl_linear")),
    ("attention", ("scaled_dot_product", "_flash_attention", "_efficient_attention")),
    ("softmax, log-softmax, losses", ("softmax", "log_softmax", "_softmax", "cross_entropy", "nll_loss", "kl_div")),
    ("normalisation", ("layer_norm", "rms_norm", "native_layer_norm", "norm", "rsqrt", "pow", "mean")),
    ("embedding, gather, index, copy", ("embedding", "index", "gather", "copy_", "cat", "masked", "where", "clone",
                                        "to", "_to_copy", "contiguous", "fill_", "zero_")),
    ("elementwise", ("mul", "add", "sub", "div", "silu", "gelu", "neg", "exp", "sigmoid", "tanh", "relu")),
)


def group_of(name: str) -> str:
    base = name.split("::")[-1].lstrip("_").replace("_backward", "").replace("Backward0", "").lower()
    if "backward" in name.lower() and name.startswith(("autograd::", "torch::autograd")):
        return "autograd bookkeeping"
    for group, keys in GROUPS:
        if any(base == k.lstrip("_") or base.startswith(k.lstrip("_") + "_") for k in keys):
            return group
    return "other"


def main() -> None:
    p = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    p.add_argument("--steps", type=int, default=12, help="updates to run (default: %(default)s)")
    p.add_argument("--skip", type=int, default=4, help="first updates not profiled (default: %(default)s)")
    p.add_argument("--out", default="/tmp/profile_train", help="the run's exp dir (default: %(default)s)")
    p.add_argument("--top", type=int, default=20, help="operators listed (default: %(default)s)")
    p.add_argument("train_args", nargs=argparse.REMAINDER, help="-- then blspkd.bin.train options (--config ...)")
    args = p.parse_args()
    import torch
    from torch.optim.optimizer import register_optimizer_step_post_hook
    from torch.profiler import ProfilerActivity, profile, schedule

    from blspkd.bin import train

    active = args.steps - args.skip
    if active < 1:
        p.error("--steps must exceed --skip")
    train_args = [a for a in args.train_args if a != "--"]
    train_args += ["--exp_dir", str(Path(args.out)), "--max_steps", str(args.steps), "--valid_interval", "100000",
                   "--save_interval", "100000", "--tensorboard", "false", "--log_interval", "1"]
    with profile(activities=[ProfilerActivity.CPU], schedule=schedule(wait=0, warmup=args.skip, active=active,
                                                                      repeat=1)) as prof:
        handle = register_optimizer_step_post_hook(lambda *_: prof.step())
        try:
            rc = train.main(train_args)
        finally:
            handle.remove()
    if rc:
        raise SystemExit(f"training failed (exit {rc}); see above")
    events = [e for e in prof.key_averages() if e.self_cpu_time_total > 0]
    total = sum(e.self_cpu_time_total for e in events)
    per_update = total / active / 1e3
    print(f"profiled {active} updates (after {args.skip}), torch {torch.__version__}, {torch.get_num_threads()} "
          f"threads: {per_update:.0f} ms of operator CPU time per update (summed over threads)")
    groups: dict[str, float] = defaultdict(float)
    for e in events:
        groups[group_of(e.key)] += e.self_cpu_time_total
    print("by group:")
    for name, t in sorted(groups.items(), key=lambda kv: -kv[1]):
        print(f"  {name:<32} {t / active / 1e3:8.1f} ms/update  {100 * t / total:5.1f} %")
    print(f"top {args.top} operators:")
    for e in sorted(events, key=lambda e: -e.self_cpu_time_total)[: args.top]:
        print(f"  {e.key:<48} {e.self_cpu_time_total / active / 1e3:8.1f} ms/update  "
              f"{100 * e.self_cpu_time_total / total:5.1f} %  calls/update {e.count / active:7.1f}")


if __name__ == "__main__":
    main()
