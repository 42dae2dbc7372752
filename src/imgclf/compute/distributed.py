"""torch.distributed for imgclf: which rank this process is, the process group, shards, and the launcher.

    torchrun --standalone --nproc-per-node 2 -m imgclf train ...     (or: imgclf train --nproc 2 ...)

torchrun starts the processes and sets RANK, WORLD_SIZE, LOCAL_RANK and LOCAL_WORLD_SIZE; `setup()` joins the
group (Gloo on CPUs, NCCL on GPUs). Training wraps the same Trainer (training/trainer.py): each rank takes its shard of
every epoch's order (DistributedSampler semantics: one permutation from (seed, epoch), padded to a multiple of
the world size, rank r takes every world-th entry from r), the model is wrapped in DistributedDataParallel, and
rank 0 alone writes. Evaluation and prediction split the work into whole batches, so every image is computed in
the batch it would be in one process, and the results gather in the single process's order.

Without torchrun (or with a world of 1) everything here answers for one process and starts nothing.
"""

from __future__ import annotations

import contextlib
import datetime
import logging
import os
import subprocess
import sys
from dataclasses import dataclass

import torch
import torch.distributed as dist

from imgclf.core.errors import UsageError

log = logging.getLogger(__name__)

DEFAULT_TIMEOUT = 300.0  # seconds a rank waits for the others in one collective before it gives up


@dataclass(frozen=True)
class World:
    rank: int = 0
    size: int = 1
    local_rank: int = 0
    local_size: int = 1

    @property
    def main(self) -> bool:
        return self.rank == 0

    @property
    def distributed(self) -> bool:
        return self.size > 1


def world_from_env() -> World:
    """This process's place, from the variables torchrun sets (one process when they are absent)."""
    env = os.environ
    size = int(env.get("WORLD_SIZE", "1"))
    if size <= 1:
        return World()
    return World(
        rank=int(env.get("RANK", "0")),
        size=size,
        local_rank=int(env.get("LOCAL_RANK", "0")),
        local_size=int(env.get("LOCAL_WORLD_SIZE", str(size))),
    )


def current() -> World:
    """The world of the initialised process group (one process when there is none)."""
    if not (dist.is_available() and dist.is_initialized()):
        return World()
    return world_from_env() if dist.get_world_size() > 1 else World()


def backend_for(device: torch.device) -> str:
    return "nccl" if device.type == "cuda" else "gloo"


def rank_device(device: torch.device, world: World) -> torch.device:
    """One GPU per local rank (cuda:LOCAL_RANK); a CPU is shared."""
    if device.type == "cuda" and world.distributed and device.index is None:
        return torch.device("cuda", world.local_rank % max(1, torch.cuda.device_count()))
    return device


def cores() -> int:
    try:
        return len(os.sched_getaffinity(0))
    except AttributeError:  # not on Linux
        return os.cpu_count() or 1


@contextlib.contextmanager
def setup(device: torch.device, timeout: float = DEFAULT_TIMEOUT):
    """Join the process group torchrun describes for the length of the block (nothing without torchrun, or when
    the caller has joined one already), and yield this process's device (cuda:LOCAL_RANK on GPUs).

    `timeout`: seconds any collective waits for the other ranks; a rank that died makes the others fail at their
    next collective, within this time at the latest."""
    world = world_from_env()
    if not world.distributed or dist.is_initialized():
        yield rank_device(device, world)
        return
    if not dist.is_available():
        raise UsageError("this PyTorch build has no torch.distributed: run in one process (without torchrun)")
    device = rank_device(device, world)
    if device.type == "cuda":
        torch.cuda.set_device(device)
    kw = {"device_id": device} if device.type == "cuda" else {}
    attempt = int(os.environ.get("TORCHELASTIC_RESTART_COUNT", "0") or 0)
    if attempt > 0:
        kw |= {"store": restart_store(world, timeout, attempt), "rank": world.rank, "world_size": world.size}
    dist.init_process_group(backend_for(device), timeout=datetime.timedelta(seconds=timeout), **kw)
    try:
        yield device
    finally:
        dist.destroy_process_group()


def restart_store(world: World, timeout: float, attempt: int):
    """The store of a worker group that torchrun restarted (--max-restarts): the one torchrun names in
    MASTER_ADDR:MASTER_PORT, under a prefix of this attempt's own. torchrun may keep that store across restarts, and
    then the keys the failed attempt left there (each rank's Gloo address) can be read before the new ranks write
    theirs: a rank then connects to a peer that is gone, and the restarted group fails or hangs in
    init_process_group (seen here about one restart in three on a loaded machine)."""
    agent = os.environ.get("TORCHELASTIC_USE_AGENT_STORE") == str(True)  # the agent serves the store itself
    base = dist.TCPStore(
        os.environ["MASTER_ADDR"],
        int(os.environ["MASTER_PORT"]),
        world.size,
        is_master=not agent and world.rank == 0,
        timeout=datetime.timedelta(seconds=timeout),
        multi_tenant=True,
    )
    return dist.PrefixStore(f"imgclf/attempt_{attempt}/", base)


def rank_threads(world: World) -> int:
    """CPU threads per rank: the cores divided among the ranks on this machine."""
    return max(1, cores() // max(1, world.local_size))


# ------------------------------------------------------------------------------------------------ collectives


def broadcast(obj, world: World | None = None):
    """Rank 0's `obj` on every rank (the object itself in one process)."""
    world = world or current()
    if not world.distributed:
        return obj
    box = [obj]
    dist.broadcast_object_list(box, src=0)
    return box[0]


def gather(obj, world: World | None = None) -> list:
    """Every rank's `obj`, in rank order, on every rank."""
    world = world or current()
    if not world.distributed:
        return [obj]
    out = [None] * world.size
    dist.all_gather_object(out, obj)
    return out


def barrier(world: World | None = None) -> None:
    world = world or current()
    if world.distributed:
        dist.barrier()


# ------------------------------------------------------------------------------------------------ shards


def shard_order(order: torch.Tensor, rank: int, size: int) -> torch.Tensor:
    """DistributedSampler's shard of an epoch's order: padded with its own start to a multiple of `size`, then
    every size-th entry from `rank`. Every rank gets the same number of images (so the same number of steps)."""
    if size <= 1:
        return order
    n = len(order)
    total = -(-n // size) * size
    if total > n:
        order = torch.cat([order, order[: total - n]])
    return order[rank:total:size]


def batch_block(n_batches: int, rank: int, size: int) -> range:
    """Rank `rank`'s contiguous block of `n_batches` batches (the first ranks get one more when they do not
    divide): gathered in rank order, the blocks are the batches in order."""
    per, extra = divmod(n_batches, size)
    start = rank * per + min(rank, extra)
    return range(start, start + per + (rank < extra))


# ------------------------------------------------------------------------------------------------ the launcher


def launch(nproc: int, argv: list[str], *, max_restarts: int = 0) -> int:
    """`imgclf ... --nproc N`: the same command under `torchrun --standalone --nproc-per-node N` (and
    `--max-restarts`, when given); its exit code.

    Each rank gets the cores divided by N as its threads (OMP_NUM_THREADS, unless set), not torchrun's default of
    one."""
    if world_from_env().distributed:
        raise UsageError("--nproc starts torchrun itself: drop it when the command already runs under torchrun")
    env = dict(os.environ)
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores() // nproc)))
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}"]
    cmd += [f"--max-restarts={max_restarts}"] if max_restarts else []
    cmd += ["-m", "imgclf", *argv]
    log.info("running: %s", " ".join(["torchrun", *cmd[3:]]))
    proc = subprocess.Popen(cmd, env=env)
    try:
        return proc.wait()
    except BaseException:  # Ctrl-C (which torchrun gets too) or SIGTERM: torchrun stops its workers, then we stop
        proc.terminate()
        proc.wait()
        raise


def strip_nproc(argv: list[str], flags: tuple[str, ...] = ("--nproc",)) -> list[str]:
    """argv without `--nproc N` / `--nproc=N` (and the other `flags` that take a value, the same way)."""
    out, skip = [], False
    for a in argv:
        if skip:
            skip = False
        elif a in flags:
            skip = True
        elif not a.startswith(tuple(f + "=" for f in flags)):
            out.append(a)
    return out


def lost_peer(exc: BaseException) -> bool:
    """Whether `exc` is a collective failing because another rank died or stopped answering."""
    if isinstance(exc, getattr(dist, "DistError", ())):
        return True
    text = str(exc)
    return isinstance(exc, RuntimeError) and any(
        s in text for s in ("Connection closed by peer", "Connection reset by peer", "Timed out", "timed out", "Gloo")
    )
