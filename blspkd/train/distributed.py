"""Process groups and model wrapping for multi-process training (torchrun sets RANK, WORLD_SIZE, LOCAL_RANK).

DDP (the default) replicates the model and all-reduces the gradients of the trainable parameters only; the frozen
encoder and LLM are loaded from disk by every rank and left out of DDP's start-up broadcast (for a 7B LLM that broadcast
would move 14+ GB for nothing). FSDP (``distributed: fsdp``, torch's ``fully_shard``) shards every LLM decoder layer and
the rest of the model over the ranks, for LLMs whose frozen weights do not fit on one GPU next to the activations; the
optimizer still holds only the trainable parameters (their shards).
"""
from __future__ import annotations

import datetime
import logging
import os

import torch
import torch.distributed as dist
from torch import nn

logger = logging.getLogger(__name__)


def init_distributed() -> tuple[int, int, torch.device]:
    """Join the process group when launched by torchrun; return (rank, world size, device)."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    local_rank = int(os.environ.get("LOCAL_RANK", "0"))
    if torch.cuda.is_available():
        device = torch.device("cuda", local_rank)
        torch.cuda.set_device(device)
    else:
        device = torch.device("cpu")
    if world > 1 and not dist.is_initialized():
        backend = "nccl" if device.type == "cuda" else "gloo"
        dist.init_process_group(backend=backend, timeout=datetime.timedelta(minutes=30))
        logger.info("joined process group: rank %d of %d, backend %s, device %s", rank, world, backend, device)
    return rank, world, device


def is_distributed() -> bool:
    return dist.is_available() and dist.is_initialized() and dist.get_world_size() > 1


def all_reduce_sum(values: list[float], device: torch.device) -> list[float]:
    """Sum a list of floats over ranks (identity in a single process)."""
    if not is_distributed():
        return list(values)
    t = torch.tensor(values, dtype=torch.float64, device=device)
    dist.all_reduce(t)
    return t.tolist()


def any_rank(flag: bool, device: torch.device) -> bool:
    """True when ``flag`` is true on at least one rank, so every rank takes the same branch."""
    return all_reduce_sum([1.0 if flag else 0.0], device)[0] > 0


def barrier() -> None:
    if is_distributed():
        dist.barrier()


def wrap_ddp(model: nn.Module, device: torch.device, find_unused_parameters: bool) -> nn.Module:
    from torch.nn.parallel import DistributedDataParallel as DDP

    frozen = [name for name, p in model.named_parameters() if not p.requires_grad]
    frozen += [name for name, _ in model.named_buffers()]
    DDP._set_params_and_buffers_to_ignore_for_model(model, frozen)
    return DDP(
        model,
        device_ids=[device.index] if device.type == "cuda" else None,
        find_unused_parameters=find_unused_parameters,
    )


def wrap_fsdp(model: nn.Module, device: torch.device, param_dtype: torch.dtype | None) -> nn.Module:
    """Shard every transformer block named in a Hugging Face sub-model's ``_no_split_modules``, then the root."""
    from torch.distributed.fsdp import MixedPrecisionPolicy, fully_shard

    block_names: set[str] = set()
    for m in model.modules():
        block_names.update(getattr(m, "_no_split_modules", None) or [])
    mp = MixedPrecisionPolicy(param_dtype=param_dtype, reduce_dtype=torch.float32 if param_dtype else None)
    blocks = [m for m in model.modules() if type(m).__name__ in block_names]
    for m in blocks:
        fully_shard(m, mp_policy=mp)
    fully_shard(model, mp_policy=mp)
    logger.info("FSDP: sharded %d blocks (%s) and the root over %d ranks", len(blocks), ", ".join(sorted(block_names)),
                dist.get_world_size())
    return model


def full_tensor(t: torch.Tensor) -> torch.Tensor:
    """A full (unsharded) CPU copy of a possibly FSDP-sharded tensor; every rank must call it."""
    if hasattr(t, "full_tensor"):
        t = t.full_tensor()
    return t.detach().cpu()


def shard_like(full: torch.Tensor, param: torch.Tensor) -> torch.Tensor:
    """``full`` cut the way ``param`` is sharded (a plain copy when ``param`` is not an FSDP DTensor)."""
    if hasattr(param, "device_mesh"):
        from torch.distributed.tensor import distribute_tensor

        return distribute_tensor(full.to(param.device, param.dtype), param.device_mesh, param.placements)
    return full.to(param.device)
