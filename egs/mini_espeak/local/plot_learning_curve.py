"""Learning curves of one or more training runs (the phases of stages 4-5) as one PNG, from the trainer's TensorBoard
event files (``<exp>/tensorboard``).

Usage:
    python local/plot_learning_curve.py --exp exp/warmstart exp/pretrain exp/finetune --out learning_curve.png

One column per run. Top row: the training losses (every ``train/<loss>`` scalar; validation values of the same name
as markers). Bottom row: the quality figures (``agreement``, ``cif_acc``, ``response_acc``, ``cif_ratio``; train
lines, validation markers). A run without event files is an error naming the directory.
"""
from __future__ import annotations

import argparse
import sys
from pathlib import Path

QUALITY = ("agreement", "cif_acc", "response_acc", "cif_ratio")
NOT_LOSSES = ("lr", "utt_per_s", "tokens_per_s", "grad_norm", *QUALITY)


def read_scalars(exp: Path) -> dict[str, list[tuple[int, float]]]:
    from tensorboard.backend.event_processing.event_accumulator import EventAccumulator

    tb = exp / "tensorboard"
    if not tb.is_dir() or not any(tb.glob("events.out.tfevents.*")):
        raise SystemExit(f"{tb}: no TensorBoard event files (was the run trained with tensorboard: true?)")
    acc = EventAccumulator(str(tb), size_guidance={"scalars": 0})
    acc.Reload()
    return {tag: [(e.step, e.value) for e in acc.Scalars(tag)] for tag in acc.Tags()["scalars"]}


def main(argv: list[str]) -> None:
    p = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    p.add_argument("--exp", nargs="+", required=True, help="experiment dirs, in training order")
    p.add_argument("--out", required=True, help="PNG file to write")
    p.add_argument("--title", default="mini_espeak: learning curves (2-core CPU)")
    args = p.parse_args(argv)
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    runs = [(Path(e), read_scalars(Path(e))) for e in args.exp]
    fig, axes = plt.subplots(2, len(runs), figsize=(4.2 * len(runs), 6.0), squeeze=False)
    for col, (exp, scalars) in enumerate(runs):
        top, bottom = axes[0][col], axes[1][col]
        for tag, points in sorted(scalars.items()):
            split, _, name = tag.partition("/")
            if split not in ("train", "valid") or not points:
                continue
            steps, values = zip(*points)
            ax = bottom if name in QUALITY else top if name not in NOT_LOSSES else None
            if ax is None:
                continue
            if split == "train":
                ax.plot(steps, values, label=name, linewidth=1.2)
            else:
                ax.plot(steps, values, "o", markersize=4, label=f"valid {name}")
        top.set_title(exp.name)
        top.set_ylabel("loss")
        bottom.set_ylabel("accuracy / ratio")
        bottom.set_xlabel("update")
        for ax in (top, bottom):
            ax.grid(alpha=0.3)
            if ax.lines:
                ax.legend(fontsize=7)
    fig.suptitle(args.title)
    fig.tight_layout()
    Path(args.out).parent.mkdir(parents=True, exist_ok=True)
    fig.savefig(args.out, dpi=80)
    print(f"wrote {args.out}")


if __name__ == "__main__":
    main(sys.argv[1:])
