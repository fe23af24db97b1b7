"""Several processes, one training: joining the process group torchrun describes, wrapping the
trained module in DistributedDataParallel, and the few collectives the trainers need.

Launched by torchrun (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT`` in
the environment), ``setup_device`` joins the process group (NCCL on CUDA, gloo on the CPU)
and puts each process on GPU ``LOCAL_RANK``. Without a launcher nothing here talks to
anything: world size 1, rank 0, no process group, and every helper is a no-op or the identity.

Cross-rank traffic is limited to PyTorch's own DDP gradient all-reduce, one small sum of
loss-normalising counts per step (``all_reduce_sums``), the logged numbers (``all_reduce_mean``)
and evaluation results (``gather_to_main`` / ``broadcast_from_main``).
"""

from __future__ import annotations

import logging
import os
from collections.abc import Mapping, Sequence
from typing import Any, TypeVar

import torch
import torch.distributed as dist
from torch import nn
from torch.nn.parallel import DistributedDataParallel

from masqclip.training.recipe import RecipeError

logger = logging.getLogger('masqclip')

T = TypeVar('T')

_owns_group = False  # whether setup_device created the process group (then shutdown ends it)


def launched() -> bool:
    """Whether a launcher (torchrun) started this process as one rank of several."""
    return 'RANK' in os.environ and 'WORLD_SIZE' in os.environ


def is_distributed() -> bool:
    """Whether a process group is up (False in a plain single process)."""
    return dist.is_available() and dist.is_initialized()


def rank_and_world() -> tuple[int, int]:
    """(rank, world size): (0, 1) unless torch.distributed is initialised."""
    if is_distributed():
        return dist.get_rank(), dist.get_world_size()
    return 0, 1


def is_main_process() -> bool:
    """Rank 0: the process that writes files, logs and shows progress bars."""
    return rank_and_world()[0] == 0


def _named_device(name: str) -> torch.device:
    """'auto' = CUDA when present, else the CPU; otherwise the torch device ``name`` names."""
    if name == 'auto':
        return torch.device('cuda' if torch.cuda.is_available() else 'cpu')
    device = torch.device(name)
    if device.type == 'cuda' and not torch.cuda.is_available():
        raise RecipeError(f'device {name!r} but CUDA is not available: use auto or cpu')
    return device


def _rank_device(name: str, device: torch.device) -> torch.device:
    """This rank's share of ``device`` under a launcher: GPU ``LOCAL_RANK``, or the CPU."""
    if device.type == 'cpu':
        return device
    if device.type != 'cuda':
        raise RecipeError(f'device {name!r}: torchrun runs support cpu, cuda or auto')
    world = int(os.environ['WORLD_SIZE'])
    if device.index is not None and world > 1:
        raise RecipeError(
            f'device {name!r} names one GPU, but torchrun started {world} processes: use cuda '
            'or auto (each process takes GPU LOCAL_RANK; choose GPUs with CUDA_VISIBLE_DEVICES)'
        )
    local_rank = int(os.environ.get('LOCAL_RANK', '0'))
    if local_rank >= torch.cuda.device_count():
        raise RecipeError(
            f'LOCAL_RANK {local_rank} but only {torch.cuda.device_count()} GPUs are visible: '
            'start at most that many processes per machine (--nproc-per-node)'
        )
    return torch.device('cuda', local_rank if device.index is None else device.index)


def setup_device(name: str) -> torch.device:
    """The device this process computes on, the one place that decides it (training and
    evaluation, one process or torchrun alike); under torchrun, join the process group first.

    'auto' = CUDA when present, else the CPU; otherwise a torch device string. Under torchrun:
    'auto' / 'cuda' = GPU ``LOCAL_RANK`` (backend NCCL), 'cpu' = the CPU (backend gloo). Ranks
    other than 0 log warnings and errors only. Calling it again (or with a group set up by the
    caller) joins nothing new.

    :param name: 'auto', 'cpu', 'cuda' or 'cuda:N' (one process only).
    :raises RecipeError: CUDA asked for but absent, or one GPU named for several processes.
    """
    global _owns_group
    device = _named_device(name)
    if not launched():
        return device
    device = _rank_device(name, device)
    if device.type == 'cuda':
        torch.cuda.set_device(device)
    if not is_distributed():
        dist.init_process_group('nccl' if device.type == 'cuda' else 'gloo')
        _owns_group = True
    rank, world = rank_and_world()
    if rank != 0:
        logger.setLevel(logging.WARNING)
    logger.info(
        'distributed: %d processes, backend %s, rank 0 on %s', world, dist.get_backend(), device
    )
    return device


def shutdown() -> None:
    """Leave the process group if ``setup_device`` created it (a caller's group stays)."""
    global _owns_group
    if _owns_group and is_distributed():
        dist.destroy_process_group()
    _owns_group = False


def barrier() -> None:
    """Wait for every rank (e.g. until rank 0 has written a file the others read)."""
    if is_distributed():
        dist.barrier()


def wrap_ddp(module: nn.Module, device: torch.device) -> nn.Module:
    """``module`` in DistributedDataParallel when a process group is up, else itself.

    Buffers are not re-broadcast each forward: the proposer's are frozen batch-norm statistics
    and CLIP's are constants, identical on every rank from the start.

    :param module: the module whose trainable parameters the step's forward uses.
    :param device: this rank's device.
    """
    if not is_distributed():
        return module
    device_ids = [device.index] if device.type == 'cuda' else None
    return DistributedDataParallel(module, device_ids=device_ids, forward_sync_buffers=False)


def _collective_device() -> torch.device:
    # NCCL reduces CUDA tensors only; gloo reduces CPU ones.
    if dist.get_backend() == 'nccl':
        return torch.device('cuda', torch.cuda.current_device())
    return torch.device('cpu')


def all_reduce_sums(values: Mapping[str, float]) -> dict[str, float]:
    """Each value summed over the ranks (float64, so counts stay exact); every rank must pass
    the same keys.

    :param values: name -> number on this rank.
    :return: name -> sum over all ranks, in the input's order (the input, as floats, without
        a process group).
    """
    if not is_distributed() or not values:
        return {k: float(v) for k, v in values.items()}
    keys = sorted(values)  # the same order on every rank, whatever order the dict was built in
    tensor = torch.tensor([float(values[k]) for k in keys], dtype=torch.float64)
    tensor = tensor.to(_collective_device())
    dist.all_reduce(tensor)
    summed = dict(zip(keys, tensor.tolist(), strict=True))
    return {k: summed[k] for k in values}


def all_reduce_mean(values: Mapping[str, float]) -> dict[str, float]:
    """Each value averaged over the ranks (for logging: every rank's loss on its shard)."""
    world = rank_and_world()[1]
    return {k: v / world for k, v in all_reduce_sums(values).items()}


def gather_to_main(obj: T) -> list[T] | None:
    """Every rank's ``obj`` (picklable), in rank order, on rank 0; None on the other ranks.

    Uses ``all_gather_object`` (every rank receives the list; only rank 0 keeps it).
    """
    rank, world = rank_and_world()
    if world == 1:
        return [obj]
    gathered: list[Any] = [None] * world
    dist.all_gather_object(gathered, obj)
    return gathered if rank == 0 else None


def broadcast_from_main(obj: T) -> T:
    """Rank 0's ``obj`` (picklable) on every rank."""
    if not is_distributed():
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def shard(items: Sequence[T]) -> Sequence[T]:
    """This rank's share of ``items``: every world_size-th one from index ``rank``."""
    rank, world = rank_and_world()
    return items[rank::world]
