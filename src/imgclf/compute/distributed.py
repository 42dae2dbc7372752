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
import signal
import subprocess
import sys
import time
from dataclasses import dataclass

import torch
import torch.distributed as dist

from imgclf.core.errors import RankLost, UsageError

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


def all_min(value: float, device: torch.device, world: World | None = None) -> float:
    """The least of every rank's `value` (one all-reduce of one number; `value` itself in one process)."""
    world = world or current()
    if not world.distributed:
        return value
    t = torch.tensor([value], dtype=torch.float64, device=device)
    dist.all_reduce(t, op=dist.ReduceOp.MIN)
    return float(t.item())


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


# The launcher's torchrun agent: torch.distributed.run's own main, whose failures become one line (`agent`).
AGENT = "from imgclf.compute.distributed import agent; agent()"
LAUNCHED = "IMGCLF_LAUNCHED"  # set for the agent and its ranks: the launcher speaks for them when they are stopped
ADVICE = "IMGCLF_RANK_ADVICE"  # what to do after a rank was killed, for the command being run
OVERSUBSCRIBE = "IMGCLF_OVERSUBSCRIBE"  # =1: start more CPU ranks than cores


def check_ranks(nproc: int, device: torch.device) -> None:
    """--nproc N on CPUs: at most one rank per core (each rank holds its own model, data and threads: more ranks
    than cores only share the same cores, slower, in more memory). IMGCLF_OVERSUBSCRIBE=1 starts them anyway.
    (The per-rank memory estimate belongs beside this check.)"""
    n = cores()
    if device.type == "cpu" and nproc > n and os.environ.get(OVERSUBSCRIBE) != "1":
        raise UsageError(
            f"--nproc {nproc}: this machine has {n} CPU core{'s' * (n != 1)} for the ranks, and more ranks than "
            f"cores only share them, slower and in more memory: pass --nproc {n} or fewer (or set "
            f"{OVERSUBSCRIBE}=1 to start {nproc} anyway)"
        )


def launch(nproc: int, argv: list[str], *, max_restarts: int = 0, advice: str = "") -> int:
    """`imgclf ... --nproc N`: the same command under `torchrun --standalone --nproc-per-node N` (and
    `--max-restarts`, when given); its exit code.

    Each rank gets the cores divided by N as its threads (OMP_NUM_THREADS, unless set), not torchrun's default of
    one. torchrun writes no log folder (`--log-dir /dev/null`: by default it leaves a torchelastic_* folder in the
    temp folder on every run). The agent runs in a session of its own: Ctrl-C reaches this process, which passes
    one SIGINT on and waits for the ranks to stop; the agent and the ranks stop quietly (this process says
    "interrupted"), and a rank that fails is one line (`agent`). `advice`: what to do after a rank was killed."""
    if world_from_env().distributed:
        raise UsageError("--nproc starts torchrun itself: drop it when the command already runs under torchrun")
    env = dict(os.environ, **{LAUNCHED: "1", ADVICE: advice})
    env.setdefault("OMP_NUM_THREADS", str(max(1, cores() // nproc)))
    opts = ["--standalone", f"--nproc-per-node={nproc}", f"--log-dir={os.devnull}"]
    opts += [f"--max-restarts={max_restarts}"] if max_restarts else []
    log.info("running: %s", " ".join(["torchrun", *opts, "-m", "imgclf", *argv]))
    proc = subprocess.Popen(
        [sys.executable, "-c", AGENT, *opts, "-m", "imgclf", *argv], env=env, start_new_session=True
    )
    try:
        return proc.wait()
    except BaseException as e:  # Ctrl-C or SIGTERM: passed on once; torchrun stops its ranks, then we stop
        stop_agent(proc, signal.SIGINT if isinstance(e, KeyboardInterrupt) else signal.SIGTERM)
        raise


STOP_SECONDS = 90.0  # torchrun's own shutdown gives its ranks 30 s, then kills them and waits up to 30 s more


def stop_agent(proc: subprocess.Popen, sig: int) -> None:
    """Pass `sig` to torchrun's agent once and wait for it to stop its ranks; an agent still running after
    STOP_SECONDS is killed, and so is any of its ranks (each in a session of its own) still alive then: a Ctrl-C
    never leaves a rank training on its own (seen once in a while under heavy load, cause not found)."""
    ranks = {pid: _cmdline(pid) for pid in _children(proc.pid)}
    proc.send_signal(sig)
    deadline = time.monotonic() + STOP_SECONDS
    while proc.poll() is None and time.monotonic() < deadline:
        with contextlib.suppress(KeyboardInterrupt, subprocess.TimeoutExpired):  # a second Ctrl-C: stopping
            proc.wait(timeout=1.0)
    if proc.poll() is None:
        proc.kill()
        proc.wait()
    for pid, cmdline in ranks.items():
        if cmdline and _cmdline(pid) == cmdline:  # the same process, not a new one with its number
            with contextlib.suppress(OSError):
                os.kill(pid, signal.SIGKILL)


def _children(pid: int) -> list[int]:
    """A process's children (Linux /proc; none elsewhere)."""
    try:
        with open(f"/proc/{pid}/task/{pid}/children", encoding="ascii") as f:
            return [int(p) for p in f.read().split()]
    except OSError:
        return []


def _cmdline(pid: int) -> bytes:
    try:
        with open(f"/proc/{pid}/cmdline", "rb") as f:
            return f.read()
    except OSError:
        return b""


def agent() -> None:
    """The launcher's torchrun (a process of its own): torch.distributed.run's main with the command line given,
    its log lines at CRITICAL unless --verbose, and its ending as one line: a rank that failed on its own has
    said why (its exit code is the agent's); a rank killed by a signal is named here with the launcher's advice;
    a stop the launcher asked for (SIGINT, SIGTERM) is silent."""
    args = sys.argv[1:]
    from torch.distributed.elastic.multiprocessing.api import SignalException  # noqa: PLC0415 - the agent only
    from torch.distributed.elastic.multiprocessing.errors import ChildFailedError  # noqa: PLC0415
    from torch.distributed.run import main  # noqa: PLC0415

    if not {"-v", "--verbose"} & set(args):  # torch.distributed.elastic's loggers take their level when made
        for name in [n for n in logging.root.manager.loggerDict if n.startswith("torch.distributed")]:
            logging.getLogger(name).setLevel(logging.CRITICAL)
    try:
        main(args)
    except ChildFailedError as e:
        code, line = failure(e, os.environ.get(ADVICE, ""))
        if line:
            print(line, file=sys.stderr)
        sys.exit(code)
    except SignalException as e:
        sys.exit(128 + int(e.sigval))


def failure(err, advice: str = "") -> tuple[int, str]:
    """(exit code, the line to print or "") for torchrun's ChildFailedError. A rank killed or stopped by a signal
    is named (the ranks that then lost it said nothing: RankLost.launched_exit_code); else a rank that ended on
    its own with an error (a refusal, a full disk) has said so in its line; else the ranks lost each other.
    `advice`: what to do next, for the command that ran."""
    stopped = {128 + signal.SIGINT: "SIGINT", 128 + signal.SIGTERM: "SIGTERM"}
    quits = (*stopped, -signal.SIGINT, -signal.SIGTERM)  # how a rank that torchrun stopped ends
    by_signal = [(r, f) for r, f in sorted(err.failures.items()) if f.exitcode < 0 or f.exitcode in stopped]
    lost = [r for r, f in sorted(err.failures.items()) if f.exitcode == RankLost.launched_exit_code]
    advice = f": {advice}" if advice else ""
    if by_signal:
        # the rank that died first, not those torchrun then stopped (with SIGTERM) or that lost it (exit 75)
        rank, first = min(by_signal, key=lambda rf: (rf[1].exitcode in quits, rf[1].timestamp, rf[0]))
        name = stopped.get(first.exitcode) or first.signal_name()
        why = " (the kernel's out-of-memory killer, or a kill)" if first.exitcode == -signal.SIGKILL else ""
        return (
            1,
            f"imgclf: error: rank {rank} (pid {first.pid}) was stopped by {name}{why}; the others were too{advice}",
        )
    spoke = [f for f in err.failures.values() if f.exitcode != RankLost.launched_exit_code]
    if spoke:
        return spoke[0].exitcode, ""
    who = f"rank{'s' * (len(lost) > 1)} {', '.join(map(str, lost))}"
    return 1, f"imgclf: error: {who}: the other ranks stopped answering within --dist-timeout{advice}"


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
