"""One training loop for KD pretraining (stage 4) and instruction tuning (stage 5).

What a step does: the collated batch goes through ``BlspKdModel.forward`` (teacher pass on text, student pass on speech,
the configured losses); ``loss / grad_accum`` is back-propagated; every ``grad_accum`` micro-batches the gradients are
clipped and AdamW (trainable parameters only) takes a step. The learning rate follows

    lr(s) = lr_max * s / W                       for s < W      (linear warmup over W = optim.warmup_steps updates)
    lr(s) = lr_max * (S - s) / max(1, S - W)     for s >= W     (linear decay to 0 at S = the run's total updates)

A step whose loss or gradient norm is not finite on any rank is skipped on every rank (gradients dropped, logged).
Checkpoints (blspkd/train/checkpoint.py) hold everything that makes a resumed run identical to an uninterrupted one;
re-running the same command resumes from the newest one, and a finished run leaves ``<exp_dir>/.completed``.
"""
from __future__ import annotations

import contextlib
import difflib
import logging
import math
import time
import warnings
from collections import defaultdict
from collections.abc import Callable
from pathlib import Path

import numpy as np
import torch
from torch import nn
from torch.utils.data import DataLoader

from blspkd.data.mel import WhisperLogMel, speech_to_feats
from blspkd.train import checkpoint as ckpt
from blspkd.train import distributed as D
from blspkd.train.checks import check_train_config
from blspkd.train.config import TrainConfig, check_init_from
from blspkd.train.dataset import TrainingData
from blspkd.train.sampler import BucketBatchSampler, steps_for
from blspkd.utils.config import ConfigError, save_config, to_yaml

logger = logging.getLogger(__name__)


def lr_lambda(warmup: int, total: int) -> Callable[[int], float]:
    def f(step: int) -> float:
        if step < warmup:
            return (step + 1) / max(1, warmup)
        return max(0.0, (total - step) / max(1, total - warmup))

    return f


def resolve_precision(precision: str, device: torch.device) -> torch.dtype | None:
    """The autocast dtype (None = fp32). fp16 is refused: it needs loss scaling, which this trainer does not do."""
    if precision == "fp16":
        raise ConfigError(
            "precision: fp16 is not supported (it needs dynamic loss scaling and overflows in the KL over large "
            "vocabularies); use precision: bf16 on GPUs that have it (Ampere or newer), else fp32"
        )
    if precision == "auto":
        return torch.bfloat16 if device.type == "cuda" and torch.cuda.is_bf16_supported() else None
    if precision == "bf16":
        if device.type == "cuda" and not torch.cuda.is_bf16_supported():
            raise ConfigError("precision: bf16 is not supported by this GPU; use precision: fp32")
        return torch.bfloat16
    return None


def build_model(cfg: TrainConfig) -> nn.Module:
    """The BlspKdModel of ``cfg.model``; with ``cfg.init_from``, its trainable weights start from that model's (the
    config parser already made that model's config the base of ``cfg.model``)."""
    from blspkd.models import BlspKdModel

    init = check_init_from(cfg.init_from) if cfg.init_from else None
    model = BlspKdModel(cfg.model)
    if init is not None:
        from safetensors.torch import load_file

        init_sd = load_file(str(init / "model.safetensors"))
        own = model.trainable_state_dict()
        used = {k: v for k, v in init_sd.items() if k in own}
        new = sorted(set(own) - set(init_sd))
        dropped = sorted(set(init_sd) - set(own))
        model.load_trainable_state_dict({**own, **used})
        logger.info("init_from %s: %d tensors loaded, %d newly initialised%s, %d not trainable here%s", init,
                    len(used), len(new), f" (e.g. {new[0]})" if new else "", len(dropped),
                    f" (e.g. {dropped[0]})" if dropped else "")
    return model


def build_collator(model: nn.Module):
    from blspkd.data.collate import BlspKdCollator

    return BlspKdCollator(model.tokenizer, model.config)


class Trainer:
    def __init__(
        self,
        cfg: TrainConfig,
        model_builder: Callable[[TrainConfig], nn.Module] = build_model,
        collator_builder: Callable[[nn.Module], Callable] = build_collator,
    ):
        self.cfg = cfg
        self.rank, self.world, self.device = D.init_distributed()
        self.is_main = self.rank == 0
        self.exp_dir = Path(cfg.exp_dir)
        check_train_config(cfg)  # everything the config and the file system can tell, before anything is built
        self.autocast_dtype = resolve_precision(cfg.precision, self.device)
        torch.manual_seed(cfg.seed)
        np.random.seed(cfg.seed)
        self.model = model_builder(cfg).to(self.device)
        self.module = self.model  # the unwrapped model (DDP wraps self.model later)
        if cfg.gradient_checkpointing:
            if not hasattr(self.module, "gradient_checkpointing_enable"):
                raise ConfigError("gradient_checkpointing: this model has no gradient_checkpointing_enable()")
            self.module.gradient_checkpointing_enable()
        self.collate = collator_builder(self.module)
        self.log_mel: WhisperLogMel | None = None  # built from the model's feature extractor when raw audio comes
        encoder = self._encoder_record() if cfg.data.encoder_cache else None
        self.train_data = TrainingData([d.path for d in cfg.data.train], cfg.data.tasks, cfg.data.batch_type, encoder)
        self.sampler = BucketBatchSampler(
            self.train_data.lengths, [d.weight for d in cfg.data.train], self.train_data.eligible,
            [t.weight for t in cfg.data.tasks], cfg.data.batch_bins, cfg.data.max_batch_size, cfg.seed,
            self.rank, self.world, names=[f"data.train[{i}] ({d.path})" for i, d in enumerate(cfg.data.train)],
        )
        self.valid_data = (
            TrainingData(cfg.data.valid, cfg.data.tasks, cfg.data.batch_type, encoder) if cfg.data.valid else None
        )
        self.batches_per_epoch = len(self.sampler)
        self.total_steps = cfg.max_steps or steps_for(self.batches_per_epoch, cfg.optim.grad_accum, cfg.num_epochs)
        self.trainable = [(n, p) for n, p in self.module.trainable_named_parameters()]
        if not self.trainable:
            raise ConfigError("the model has no trainable parameters: check model.freeze_* / plora settings")
        self.step = 0
        self.epoch = 0
        self.batch_pos = 0  # batches of this rank consumed in the current epoch
        self.skipped_steps = 0
        resume = ckpt.latest_checkpoint(self.exp_dir)
        resume_state = None
        if resume is not None:
            weights, resume_state = ckpt.load_checkpoint(resume)
            self.module.load_trainable_state_dict(weights)
        if self.world > 1:
            if cfg.distributed == "fsdp":
                self.model = D.wrap_fsdp(self.model, self.device, self.autocast_dtype)
            else:
                self.model = D.wrap_ddp(self.model, self.device, cfg.find_unused_parameters)
        params = dict(self.module.named_parameters())
        self.params = [params[n] for n, _ in self.trainable]  # after FSDP these are the DTensor shards
        self.optimizer = self._optimizer()
        self.scheduler = torch.optim.lr_scheduler.LambdaLR(
            self.optimizer, lr_lambda(cfg.optim.warmup_steps, self.total_steps)
        )
        if resume_state is not None:
            self._restore(resume_state)
            logger.info("resumed from %s: step %d, epoch %d, batch %d", resume, self.step, self.epoch, self.batch_pos)
        n_train = sum(p.numel() for _, p in self.trainable)
        n_all = sum(p.numel() for p in self.module.parameters())
        logger.info(
            "model: %.2fM trainable of %.2fM parameters (%d tensors); %d batches/epoch/rank, %d updates in total "
            "(grad_accum %d, world %d, precision %s, %s)", n_train / 1e6, n_all / 1e6, len(self.trainable),
            self.batches_per_epoch, self.total_steps, cfg.optim.grad_accum, self.world,
            self.autocast_dtype or "fp32", cfg.distributed if self.world > 1 else "single process",
        )
        self.writer = None
        if self.is_main and cfg.tensorboard:
            from torch.utils.tensorboard import SummaryWriter

            self.writer = SummaryWriter(str(self.exp_dir / "tensorboard"))

    # ----------------------------------------------------------------- set-up helpers
    def _encoder_record(self) -> dict:
        """What data.encoder_cache checks each dump dir's cached outputs against (blspkd/data/encoder_cache.py)."""
        from blspkd.data.encoder_cache import encoder_record

        config = getattr(self.module, "config", None)
        if not getattr(config, "freeze_speech_encoder", False):
            raise ConfigError("data.encoder_cache: true needs a frozen speech encoder (model.freeze_speech_encoder: "
                              "true): a trained encoder's outputs change at every update")
        return encoder_record(self.module.speech_encoder, config.speech_encoder)

    def _optimizer(self) -> torch.optim.Optimizer:
        """AdamW without weight decay on biases and norm scales (1-D tensors, as in BERT/HF Trainer); with
        ``optim.plora_lr`` or ``optim.speech_encoder_lr`` set, PLoRA's or the encoder's weights form groups of their
        own at that lr, after the adapter's."""
        o = self.cfg.optim
        own = {"plora_lr": (o.plora_lr, lambda name: "lora_" in name, "trainable PLoRA weights (model.plora is null)"),
               "speech_encoder_lr": (o.speech_encoder_lr, lambda name: name.startswith("speech_encoder."),
                                     "trainable speech encoder (model.freeze_speech_encoder is true)")}
        groups: dict[tuple[str, bool], list] = {}
        for (name, _), p in zip(self.trainable, self.params):
            key = next((k for k, (lr, owns, _) in own.items() if lr is not None and owns(name)), "")
            groups.setdefault((key, p.ndim < 2), []).append(p)
        for key, (lr, _, what) in own.items():
            if lr is not None and not any(k == key for k, _ in groups):
                raise ConfigError(f"optim.{key} is set but the model has no {what}: remove optim.{key} or "
                                  "train those weights")
        param_groups = []
        for (key, no_decay), params in sorted(groups.items()):
            group = {"params": params, "weight_decay": 0.0 if no_decay else o.weight_decay}
            if key:
                group["lr"] = own[key][0]
            param_groups.append(group)
        return torch.optim.AdamW(param_groups, lr=o.lr, betas=tuple(o.betas), eps=o.eps)

    def _fsdp(self) -> bool:
        return self.world > 1 and self.cfg.distributed == "fsdp"

    def _optimizer_state(self) -> dict:
        """The optimizer state with full tensors (FSDP shards gathered), indexed like ``optimizer.state_dict()``."""
        sd = self.optimizer.state_dict()
        if self._fsdp():
            sd["state"] = {i: {k: D.full_tensor(v) if torch.is_tensor(v) and v.ndim else v for k, v in st.items()}
                           for i, st in sd["state"].items()}
        return sd

    def _restore(self, state: dict) -> None:
        optim_state = state["optimizer"]
        if len(optim_state["param_groups"]) != len(self.optimizer.param_groups):
            raise ConfigError(
                f"{self.exp_dir}: its checkpoint's optimizer has {len(optim_state['param_groups'])} parameter groups "
                f"and this config builds {len(self.optimizer.param_groups)}: optim.plora_lr or "
                f"optim.speech_encoder_lr was set or unset since it was saved. Resume with the saved values "
                f"({self.exp_dir}/config.yaml) or start a new exp_dir")
        if self._fsdp():  # cut the full tensors into this rank's shards, laid out like the parameters
            ordered = [p for group in self.optimizer.param_groups for p in group["params"]]
            optim_state["state"] = {
                i: {k: D.shard_like(v, ordered[i]) if torch.is_tensor(v) and v.ndim else v for k, v in st.items()}
                for i, st in optim_state["state"].items()
            }
        self.optimizer.load_state_dict(optim_state)
        self.scheduler.load_state_dict(state["scheduler"])
        self.step, self.epoch, self.batch_pos = state["step"], state["epoch"], state["batch_pos"]
        self.skipped_steps = state.get("skipped_steps", 0)
        if state["world_size"] != self.world:
            raise RuntimeError(
                f"checkpoint was written by {state['world_size']} rank(s), this run has {self.world}: the data "
                "position cannot be carried over; resume with the same number of processes or start a new exp_dir"
            )
        ckpt.set_rng_state(state["rng"][self.rank])

    def trainable_weights(self) -> dict[str, torch.Tensor]:
        return {k: D.full_tensor(v) for k, v in self.module.trainable_state_dict().items()}

    def check_replicas(self, weights: dict[str, torch.Tensor]) -> None:
        """DDP keeps one copy of the weights per rank; they must be bit-identical (else a rank saw other updates)."""
        import hashlib

        import torch.distributed as dist

        digest = hashlib.sha1()
        for name in sorted(weights):
            digest.update(weights[name].float().numpy().tobytes())
        sums: list = [None] * self.world
        dist.all_gather_object(sums, digest.hexdigest())
        if len(set(sums)) != 1:
            raise RuntimeError(f"DDP replicas diverged at update {self.step}: weight digests per rank {sums}")
        logger.info("replica check at update %d: trainable weights identical on %d ranks (sha1 %s)", self.step,
                    self.world, sums[0][:12])

    def save(self) -> None:
        weights = self.trainable_weights()
        if D.is_distributed() and not self._fsdp():
            self.check_replicas(weights)
        optim_state = self._optimizer_state()
        # Every rank's RNG state (dropout streams differ by rank), gathered to rank 0.
        rng = [ckpt.rng_state()]
        if D.is_distributed():
            import torch.distributed as dist

            gathered: list = [None] * self.world
            dist.all_gather_object(gathered, rng[0])
            rng = gathered
        if self.is_main:
            state = {
                "step": self.step, "epoch": self.epoch, "batch_pos": self.batch_pos, "world_size": self.world,
                "skipped_steps": self.skipped_steps, "optimizer": optim_state,
                "scheduler": self.scheduler.state_dict(), "rng": rng,
            }
            path = ckpt.save_checkpoint(self.exp_dir, self.step, weights, state, self.cfg.keep_checkpoints)
            logger.info("saved checkpoint %s", path)
        D.barrier()

    # ----------------------------------------------------------------- the loop
    def _loader(self) -> DataLoader:
        self.sampler.set_epoch(self.epoch, self.batch_pos)
        # A private generator: the DataLoader draws its worker seed from it, not from the global RNG that dropout uses,
        # so creating a loader mid-epoch on resume leaves the training RNG stream exactly as in an uninterrupted run.
        gen = torch.Generator().manual_seed(self.cfg.seed * 100003 + self.epoch)
        return DataLoader(
            self.train_data, batch_sampler=self.sampler, collate_fn=self._collate_with_keys,
            num_workers=self.cfg.data.num_workers,
            generator=gen, pin_memory=self.device.type == "cuda",
        )

    def _collate_with_keys(self, items: list[dict]) -> dict:
        return {**self.collate(items), "keys": [it["key"] for it in items]}

    def _to_device(self, batch: dict) -> dict:
        """The batch on the model's device; raw audio (a --feats_type raw dump dir) becomes the log-mel there."""
        batch = {k: v.to(self.device, non_blocking=True) if torch.is_tensor(v) else v for k, v in batch.items()}
        if "speech" not in batch:
            return batch
        if self.log_mel is None:
            self.log_mel = WhisperLogMel.from_extractor(self.module.feature_extractor)
        return speech_to_feats(batch, self.log_mel)

    def _forward(self, batch: dict) -> dict:
        ctx = (
            torch.autocast(device_type=self.device.type, dtype=self.autocast_dtype)
            if self.autocast_dtype else contextlib.nullcontext()
        )
        with ctx:
            return self.model(**batch)

    def run(self) -> None:
        cfg = self.cfg
        if self.is_main:
            self.exp_dir.mkdir(parents=True, exist_ok=True)
            saved = self.exp_dir / "config.yaml"
            if saved.is_file() and saved.read_text(encoding="utf-8") != to_yaml(cfg):
                old = saved.read_text(encoding="utf-8").splitlines()
                diff = [d for d in difflib.unified_diff(old, to_yaml(cfg).splitlines(), lineterm="", n=0)][2:]
                logger.warning("the config differs from the one saved in %s: %s", saved, " | ".join(diff))
            save_config(cfg, saved)
        if self.step >= self.total_steps:
            logger.info("all %d updates were already done; writing the final model", self.total_steps)
        else:
            self._train_loop()
        if self.step >= self.total_steps:
            self._finish()

    def _train_loop(self) -> None:
        cfg = self.cfg
        accum = cfg.optim.grad_accum
        self.model.train()
        sums: dict[str, float] = defaultdict(float)
        t_start = time.time()
        t_log = time.time()
        steps_at_start = self.step
        micro = 0
        stop_at = min(self.total_steps, cfg.stop_after_steps or self.total_steps)
        done = False
        while not done:
            loader = self._loader()
            for batch in loader:
                self.batch_pos += 1
                micro += 1
                if logger.isEnabledFor(logging.DEBUG):
                    logger.debug("epoch %d batch %d keys: %s", self.epoch + 1, self.batch_pos, " ".join(batch["keys"]))
                batch = self._to_device({k: v for k, v in batch.items() if k != "keys"})
                sync = micro % accum == 0
                no_sync = getattr(self.model, "no_sync", None)
                ctx = no_sync() if (no_sync is not None and not sync) else contextlib.nullcontext()
                with ctx:
                    out = self._forward(batch)
                    loss = out["loss"]
                    (loss / accum).backward()
                self._accumulate(sums, out, batch)
                if not sync:
                    continue
                self._update(sums)
                self.step += 1
                if self.step % cfg.log_interval == 0 or self.step == stop_at:
                    self._log_train(sums, time.time() - t_log, self.step - steps_at_start, time.time() - t_start)
                    sums.clear()
                    t_log = time.time()
                at_valid = self.step % cfg.valid_interval == 0 or self.step == self.total_steps
                if self.valid_data is not None and at_valid:
                    self.validate()
                if self.step % cfg.save_interval == 0 or self.step == stop_at:
                    self.save()
                if self.step >= stop_at:
                    done = True
                    break
            else:
                self.epoch += 1
                self.batch_pos = 0
        if self.step < self.total_steps:
            logger.info("stopped after update %d of %d (stop_after_steps); re-run the same command to resume",
                        self.step, self.total_steps)

    def _accumulate(self, sums: dict[str, float], out: dict, batch: dict) -> None:
        for name, value in out.items():
            if name != "stats" and torch.is_tensor(value) and value.ndim == 0:
                v = float(value.detach())
                if math.isfinite(v):
                    sums[f"loss/{name}"] += v
        for name, value in (out.get("stats") or {}).items():
            sums[f"stat/{name}"] += float(value)
        sums["batches"] += 1
        sums["utts"] += _batch_size(batch)

    def _update(self, sums: dict[str, float]) -> None:
        clip = self.cfg.optim.clip_grad_norm
        norm = torch.nn.utils.clip_grad_norm_(self.params, clip if clip else float("inf"), error_if_nonfinite=False)
        norm = float(D.full_tensor(norm)) if torch.is_tensor(norm) else float(norm)
        if D.any_rank(not math.isfinite(norm), self.device):
            self.skipped_steps += 1
            logger.warning("update %d skipped: non-finite loss or gradient (grad norm %s); %d update(s) skipped so far",
                           self.step + 1, norm, self.skipped_steps)
            self.optimizer.zero_grad(set_to_none=True)
            with warnings.catch_warnings():  # the schedule advances with the data even when no update is made
                warnings.filterwarnings("ignore", message="Detected call of `lr_scheduler.step()`")
                self.scheduler.step()
            sums["skipped"] += 1
            return
        self.optimizer.step()
        self.scheduler.step()
        self.optimizer.zero_grad(set_to_none=True)
        sums["grad_norm"] += norm
        sums["updates"] += 1

    def _log_train(self, sums: dict[str, float], elapsed: float, steps_done: int, since_start: float) -> None:
        keys = sorted(k for k in sums if k.startswith(("loss/", "stat/")))
        base = ["batches", "utts", "updates", "grad_norm", "skipped"]
        totals = D.all_reduce_sum([sums.get(k, 0.0) for k in base + keys], self.device)
        agg = dict(zip(base + keys, totals))
        batches = max(agg["batches"], 1.0)
        lr = self.scheduler.get_last_lr()[0]
        parts = [f"step {self.step}/{self.total_steps}", f"epoch {self.epoch + 1}"]
        scalars = {"train/lr": lr}
        for k in keys:
            if k.startswith("loss/"):
                mean = agg[k] / batches
                parts.append(f"{k[5:]} {mean:.4f}")
                scalars[f"train/{k[5:]}"] = mean
        if "stat/agreement" in agg:
            parts.append(f"agreement {agg['stat/agreement'] / batches:.3f}")
            scalars["train/agreement"] = agg["stat/agreement"] / batches
        for stat, what in (("pad_frames", "frames"), ("pad_tokens", "LLM tokens")):  # padded fractions of the batches
            if f"stat/{stat}" in agg:
                parts.append(f"padding {what} {100 * agg[f'stat/{stat}'] / batches:.1f}%")
                scalars[f"train/{stat}"] = agg[f"stat/{stat}"] / batches
        utt_s = agg["utts"] / max(elapsed, 1e-9)
        tok_s = agg.get("stat/num_tokens", 0.0) / max(elapsed, 1e-9)
        remaining = (self.total_steps - self.step) * since_start / max(steps_done, 1)
        s_update = elapsed / max(agg["updates"] + agg["skipped"], 1.0)
        parts += [f"lr {lr:.3e}", f"grad_norm {agg['grad_norm'] / max(agg['updates'], 1):.3f}",
                  f"{s_update:.3f} s/update", f"{utt_s:.1f} utt/s", f"{tok_s:.1f} tokens/s", f"ETA {_hms(remaining)}"]
        if agg["skipped"]:
            parts.append(f"skipped {int(agg['skipped'])}")
        scalars.update({"train/utt_per_s": utt_s, "train/tokens_per_s": tok_s})
        if self.is_main:
            logger.info(", ".join(parts))
            if self.writer:
                for k, v in scalars.items():
                    self.writer.add_scalar(k, v, self.step)
                self.writer.flush()

    # ----------------------------------------------------------------- validation
    @torch.no_grad()
    def validate(self) -> dict[str, float]:
        cfg = self.cfg
        data = self.valid_data
        sampler = BucketBatchSampler(
            data.lengths, [1.0] * len(data.lengths), [{k: [t[0]] for k, t in e.items()} for e in data.eligible],
            [1.0] * len(cfg.data.tasks), cfg.data.batch_bins, cfg.data.max_batch_size, cfg.seed, self.rank, self.world,
            shuffle=False, even=self._fsdp(),
        )
        self.model.eval()
        t0 = time.time()
        sums: dict[str, float] = defaultdict(float)
        for i, ids in enumerate(sampler):
            if cfg.data.max_valid_batches is not None and i >= cfg.data.max_valid_batches:
                break
            batch = self._to_device(self.collate([data[x] for x in ids]))
            # The unwrapped model: validation counts differ per rank and must not trigger DDP's gradient sync.
            out = (self.model if self._fsdp() else self.module)(**batch)
            self._accumulate(sums, out, batch)
        keys = sorted(k for k in sums if k.startswith(("loss/", "stat/")))
        totals = dict(zip(["batches", "utts"] + keys,
                          D.all_reduce_sum([sums["batches"], sums["utts"]] + [sums[k] for k in keys], self.device)))
        n = max(totals["batches"], 1.0)
        counts = ("stat/num_tokens", "stat/batch_size", "stat/response_tokens", "stat/llm_positions", "stat/pad_frames",
                  "stat/pad_tokens")  # sizes, not quality measures
        result = {k.split("/", 1)[1]: totals[k] / n for k in keys if k not in counts}
        if self.is_main:
            logger.info("validation at step %d (%d utterances, %.1f s): %s", self.step, int(totals["utts"]),
                        time.time() - t0, ", ".join(f"{k} {v:.4f}" for k, v in result.items()))
            if self.writer:
                for k, v in result.items():
                    self.writer.add_scalar(f"valid/{k}", v, self.step)
                self.writer.flush()
        self._sample_generations()
        self.model.train()
        return result

    def _sample_generations(self) -> None:
        n = self.cfg.data.num_sample_generations
        if n <= 0 or (not self.is_main and not self._fsdp()):
            return
        data = self.valid_data
        items = [data[x] for x in data.all_examples()[:n]]
        batch = self._to_device(self.collate(items))  # raw audio: the log-mel computed on the device
        name = "encoder_out" if "encoder_out" in batch else "feats"  # data.encoder_cache: the cached outputs
        instructions = [it.get("instruction") for it in items]
        model = self.model if self._fsdp() else self.module
        speech = {"feats": None, "feats_lengths": None, name: batch[name], f"{name}_lengths": batch[f"{name}_lengths"]}
        hyps = model.generate(**speech, instructions=instructions if any(instructions) else None, max_new_tokens=64)
        if self.is_main:
            for it, hyp in zip(items, hyps):
                ref = it.get("response", it["text"])
                logger.info("sample %s | instruction: %s | reference: %s | generated: %s", it["key"],
                            it.get("instruction", "-"), ref, hyp)

    # ----------------------------------------------------------------- the end
    def _finish(self) -> None:
        latest = ckpt.latest_checkpoint(self.exp_dir)
        if latest is None or latest.name != f"step_{self.step:08d}":
            self.save()
        weights = self.trainable_weights()
        if self.is_main:
            out = self.exp_dir / "model"
            self.module.save_pretrained(str(out), state_dict=weights)
            (self.exp_dir / ".completed").write_text(
                f"step {self.step}\nskipped_steps {self.skipped_steps}\n{time.strftime('%Y-%m-%d %H:%M:%S')}\n"
            )
            logger.info("training complete: %d updates (%d skipped); model saved to %s", self.step,
                        self.skipped_steps, out)
        D.barrier()
        if self.writer:
            self.writer.close()


def _batch_size(batch: dict) -> int:
    for key in ("feats_lengths", "encoder_out_lengths", "speech_lengths", "feats"):
        if key in batch and torch.is_tensor(batch[key]):
            return int(batch[key].shape[0])
    return next(int(v.shape[0]) for v in batch.values() if torch.is_tensor(v) and v.ndim > 0)


def _hms(seconds: float) -> str:
    s = int(seconds)
    return f"{s // 3600}:{s % 3600 // 60:02d}:{s % 60:02d}"


def run(cfg: TrainConfig, **builders) -> Path:
    """Train (or resume, or do nothing when ``<exp_dir>/.completed`` exists) and return the exp dir."""
    exp = Path(cfg.exp_dir)
    if (exp / ".completed").is_file():
        first = (exp / ".completed").read_text().split("\n")[0]
        logger.info("%s is complete (%s); remove %s to train again", exp, first, exp / ".completed")
        return exp
    trainer = Trainer(cfg, **builders)
    trainer.run()
    return exp
