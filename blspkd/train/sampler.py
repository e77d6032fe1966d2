"""Length-bucketed batch sampler: deterministic given (seed, epoch), sharded over ranks, resumable mid-epoch.

Why not espnet2.samplers: its NumElementsBatchSampler builds one fixed batch list from shape files and leaves shuffling,
epoch-dependent subsampling and rank sharding to espnet's iterator factories (tied to its AbsTask); mixing several dump
dirs with weights and drawing a task per example each epoch do not fit its shape-file interface. The batching
rule is the same as espnet's "numel" with padding: a batch holds as many examples of similar length as fit in
``batch_size * max_length <= batch_bins``.

An epoch's plan is a pure function of (seed, epoch): which examples (dir weights can repeat or subsample a dir), which
task each example gets, the batches and their order. Rank r of W takes batches r, r+W, r+2W, ... of that list, so ranks
see different data, and a run resumes by rebuilding the plan and skipping the batches it has already consumed.
"""
from __future__ import annotations

import logging
import math
from collections.abc import Iterator, Sequence

import numpy as np

from blspkd.utils.config import ConfigError

logger = logging.getLogger(__name__)

# An example id: (dir index, utterance key, task index).
Example = tuple[int, str, int]


class BucketBatchSampler:
    """Batches of ``Example`` ids for one rank.

    ``lengths[d][key]`` is the length (frames or tokens) of utterance ``key`` of dir ``d``; ``eligible[d][key]``
    lists the task indices that can be built from it and ``task_weights`` their relative frequency.
    """

    def __init__(
        self,
        lengths: Sequence[dict[str, int]],
        dir_weights: Sequence[float],
        eligible: Sequence[dict[str, list[int]]],
        task_weights: Sequence[float],
        batch_bins: int,
        max_batch_size: int,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        shuffle: bool = True,
        even: bool = True,
        names: Sequence[str] | None = None,
    ):
        if batch_bins <= 0 or max_batch_size <= 0:
            raise ValueError(f"batch_bins ({batch_bins}) and max_batch_size ({max_batch_size}) must be positive")
        self.lengths = lengths
        self.dir_weights = list(dir_weights)
        self.eligible = eligible
        self.task_weights = np.asarray(task_weights, dtype=np.float64)
        self.batch_bins = batch_bins
        self.max_batch_size = max_batch_size
        self.seed = seed
        self.rank = rank
        self.world_size = world_size
        self.shuffle = shuffle
        self.even = even
        self.names = list(names) if names is not None else [f"dir {d}" for d in range(len(lengths))]
        self.epoch = 0
        self.start_batch = 0  # batches of this rank to skip in the current epoch (resume)
        self._too_long_logged = False
        self._empty_logged: set[int] = set()

    def set_epoch(self, epoch: int, start_batch: int = 0) -> None:
        self.epoch = epoch
        self.start_batch = start_batch

    def draws(self, d: int) -> int:
        """Examples dir ``d`` gives per epoch: its weight w repeats it int(w) times plus round(frac(w) * size)."""
        whole, frac = divmod(self.dir_weights[d], 1.0)
        return int(whole) * len(self.lengths[d]) + int(round(frac * len(self.lengths[d])))

    def _examples(self, rng: np.random.Generator) -> list[Example]:
        out: list[Example] = []
        for d, (lens, weight) in enumerate(zip(self.lengths, self.dir_weights)):
            keys = sorted(lens)
            whole, frac = divmod(weight, 1.0)
            chosen = keys * int(whole)
            if frac > 0:
                take = int(round(frac * len(keys)))
                chosen += [keys[i] for i in sorted(rng.choice(len(keys), size=take, replace=False))]
            if not chosen and weight > 0 and d not in self._empty_logged:
                self._empty_logged.add(d)
                logger.warning("%s: weight %g of %d utterances draws no example per epoch (round(%g x %d) = 0)",
                               self.names[d], weight, len(keys), frac, len(keys))
            for key in chosen:
                tasks = self.eligible[d][key]
                if not tasks:
                    continue
                p = self.task_weights[tasks] / self.task_weights[tasks].sum()
                task = tasks[int(rng.choice(len(tasks), p=p))] if len(tasks) > 1 else tasks[0]
                out.append((d, key, task))
        return out

    def epoch_batches(self, epoch: int) -> list[list[Example]]:
        """All batches of ``epoch`` over every rank, in the order they are consumed."""
        rng = np.random.default_rng([self.seed, epoch])
        examples = self._examples(rng)
        lens = np.array([self.lengths[d][k] for d, k, _ in examples], dtype=np.int64)
        # Sort by length with a random tie-break so equal-length examples meet different batch-mates each epoch.
        tie = rng.random(len(examples)) if self.shuffle else np.arange(len(examples))
        order = np.lexsort((tie, lens))
        batches: list[list[Example]] = []
        cur: list[Example] = []
        cur_max = 0
        for i in order:
            n = int(lens[i])
            if n > self.batch_bins and not self._too_long_logged:
                logger.warning(
                    "an example of length %d exceeds batch_bins=%d; it gets a batch of its own (raise data.batch_bins)",
                    n, self.batch_bins,
                )
                self._too_long_logged = True
            new_max = max(cur_max, n)
            if cur and ((len(cur) + 1) * new_max > self.batch_bins or len(cur) >= self.max_batch_size):
                batches.append(cur)
                cur, new_max = [], n
            cur.append(examples[i])
            cur_max = new_max
        if cur:
            batches.append(cur)
        if self.shuffle:
            batches = [batches[i] for i in rng.permutation(len(batches))]
        if not self.even:
            return batches
        # Every rank must run the same number of steps (a collective op per step); the few batches that do not divide
        # evenly are left for the next epoch's draw.
        usable = (len(batches) // self.world_size) * self.world_size
        if usable == 0:  # a training loop over epochs without a batch would never end
            mix = ", ".join(f"{name} weight {w:g} -> {self.draws(d)} of {len(self.lengths[d])}"
                            for d, (name, w) in enumerate(zip(self.names, self.dir_weights)))
            raise ConfigError(
                f"data: epoch {epoch + 1} has {len(batches)} batch(es) for {self.world_size} rank(s), so training "
                f"would never advance. Examples drawn per epoch (weight -> examples of utterances): {mix}. Fix: raise "
                "data.train weights (a weight w takes int(w) copies of a dir plus round(frac(w) x its size) "
                "utterances), lower data.batch_bins, or add data"
            )
        return batches[:usable]

    def __iter__(self) -> Iterator[list[Example]]:
        mine = self.epoch_batches(self.epoch)[self.rank :: self.world_size]
        yield from mine[self.start_batch :]

    def __len__(self) -> int:
        return len(self.epoch_batches(self.epoch)[self.rank :: self.world_size])

    def batches_per_epoch(self) -> int:
        return len(self)


def steps_for(num_batches: int, grad_accum: int, num_epochs: int) -> int:
    """Optimizer updates in ``num_epochs`` epochs of ``num_batches`` batches per rank."""
    return math.ceil(num_batches / grad_accum) * num_epochs
