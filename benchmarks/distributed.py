"""Distributed training on this machine: throughput of 1 and 2 ranks, and what Gloo's all-reduce costs per step.

1. Throughput: the training step imgclf runs under torchrun (the fast path's sharded epoch, the model in
   DistributedDataParallel, the very `train_steps` the Trainer calls), for 1 process and for N ranks at the same
   global batch, in images per second over all ranks; the seed's pipeline (`../shared/bench/seed_baseline.py`,
   ResNet-18, every layer training) in the same run for the ratio. 1 process runs as `imgclf train` does without
   torchrun: no process group, no DDP.
2. All-reduce: under torchrun, the median time of Gloo's all-reduce of one float32 tensor the size of a model's
   gradients (airnet_small, ResNet-18, ResNet-50), and the bus bandwidth it implies (a ring all-reduce moves
   2 (N - 1) / N of the tensor through every rank's link); from that, the seconds per step a cluster pays on a
   given network.

    .venv/bin/python benchmarks/distributed.py [--root ../shared/data/cifar10-jpg] [--ranks 2[,4,8]] [--steps 20] [--rounds 3]
"""

from __future__ import annotations

import argparse
import json
import os
import re
import statistics
import subprocess
import sys
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
SHARED = HERE.parent.parent / "shared"
GRADIENT_MODELS = ("airnet_small", "resnet18", "resnet50")


# ------------------------------------------------------------------------------------------------ the workers


def worker_throughput(root: str, model: str, global_batch: int, steps: int) -> None:
    import torch
    from torch import nn

    from imgclf.compute import distributed
    from imgclf.compute.device import to_layout
    from imgclf.core.artifact import Preprocess
    from imgclf.data.feed import make_feed
    from imgclf.data.sources import open_source
    from imgclf.models.registry import build_model
    from imgclf.training.trainer import train_steps

    dev = torch.device("cpu")
    with distributed.setup(dev):
        world = distributed.current()
        per_rank = global_batch // world.size
        src = open_source(root)
        prep = Preprocess(img_size=32, resize=32, mean=[0.485, 0.456, 0.406], std=[0.229, 0.224, 0.225])
        feed, _ = make_feed(src.splits["train"], prep, cache="disk", workers=2, augment="small", batch_size=per_rank)
        torch.manual_seed(0)
        m = to_layout(build_model(model, 10), True)
        m.train()
        step_model = m
        if world.distributed:
            step_model = nn.parallel.DistributedDataParallel(m)
        opt = torch.optim.SGD(m.parameters(), lr=0.01, momentum=0.9, weight_decay=5e-4)
        scaler, crit = torch.amp.GradScaler("cpu", enabled=False), nn.CrossEntropyLoss()
        shard = (world.rank, world.size) if world.distributed else None
        gen, aug = torch.Generator().manual_seed(0), torch.Generator().manual_seed(world.rank)

        def run(n):
            batches = feed.epoch(gen, shard=shard, aug=aug if shard else None)
            return train_steps(step_model, batches, crit, opt, scaler, dev, None, max_steps=n)[2]

        run(3)  # warm-up: first-call allocations and, under DDP, the buckets
        distributed.barrier(world)
        t = time.perf_counter()
        seen = run(steps)
        distributed.barrier(world)
        elapsed = time.perf_counter() - t
        total = sum(distributed.gather(seen, world))
        if world.main:
            print("RESULT " + json.dumps({"ips": total / elapsed, "threads": torch.get_num_threads()}), flush=True)


def worker_allreduce(repeats: int) -> None:
    import torch
    import torch.distributed as dist

    from imgclf.compute import distributed
    from imgclf.models.registry import build_model

    with distributed.setup(torch.device("cpu")):
        world = distributed.current()
        out = {}
        for name in GRADIENT_MODELS:
            n = sum(p.numel() for p in build_model(name, 10).parameters() if p.requires_grad)
            x = torch.ones(n)
            dist.all_reduce(x)  # warm-up: connections and buffers
            times = []
            for _ in range(repeats):
                dist.barrier()
                t = time.perf_counter()
                dist.all_reduce(x)
                times.append(time.perf_counter() - t)
            out[name] = {"parameters": n, "bytes": 4 * n, "seconds": statistics.median(times)}
        if world.main:
            print("RESULT " + json.dumps({"ranks": world.size, "models": out}), flush=True)


# ------------------------------------------------------------------------------------------------ the driver


def under_torchrun(nproc: int, args: list[str], threads: int) -> dict:
    env = {**os.environ, "OMP_NUM_THREADS": str(threads)}
    if nproc == 1:  # one process as `imgclf train` runs it: no torchrun, no process group
        cmd = [sys.executable, __file__, *args]
        env.pop("WORLD_SIZE", None)
    else:
        cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={nproc}", __file__]
        cmd += args
    out = subprocess.run(cmd, capture_output=True, text=True, env=env)
    if out.returncode:
        raise RuntimeError(out.stderr[-3000:])
    return json.loads(re.search(r"RESULT (.*)", out.stdout).group(1))


def seed_images_per_second(script: str, root: str, steps: int) -> float:
    out = subprocess.run(
        [sys.executable, script, root, "full", str(steps), "4"],
        capture_output=True,
        text=True,
        check=True,
    ).stdout
    return float(re.search(r"([\d.]+) train images/s", out).group(1))


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--root", default=str(SHARED / "data" / "cifar10-jpg"))
    ap.add_argument("--ranks", default="2", help="rank counts to compare with 1 process, e.g. 2,4,8 [2]")
    ap.add_argument("--seed-script", default=str(SHARED / "bench" / "seed_baseline.py"))
    ap.add_argument("--steps", type=int, default=20)
    ap.add_argument("--rounds", type=int, default=3)
    ap.add_argument("--batch", type=int, default=256, help="global batch (each rank: batch / ranks) [256]")
    ap.add_argument("--models", default="airnet_small,resnet18")
    ap.add_argument("--repeats", type=int, default=20, help="all-reduces timed per model [20]")
    ap.add_argument("--worker", choices=("throughput", "allreduce"), help=argparse.SUPPRESS)
    ap.add_argument("--model", help=argparse.SUPPRESS)
    args = ap.parse_args()
    if args.worker == "throughput":
        return worker_throughput(args.root, args.model, args.batch, args.steps)
    if args.worker == "allreduce":
        return worker_allreduce(args.repeats)

    from imgclf.compute.distributed import cores
    from imgclf.compute.machine import env_block

    print(env_block(), flush=True)
    counts, c = [int(k) for k in args.ranks.split(",")], cores()
    common = ["--root", args.root, "--batch", str(args.batch), "--steps", str(args.steps)]
    under_torchrun(1, ["--worker", "throughput", "--model", "airnet_small", *common[:2], "--steps", "1"], c)  # cache
    results = {m: {"seed": [], **{k: [] for k in [1, *counts]}} for m in args.models.split(",")}
    for r in range(args.rounds):
        seed = seed_images_per_second(args.seed_script, args.root, args.steps)
        for m, res in results.items():
            res["seed"].append(seed)
            for k in [1, *counts]:
                w = ["--worker", "throughput", "--model", m, *common]
                res[k].append(under_torchrun(k, w, max(1, c // k))["ips"])
            ranks = ", ".join(f"{k} ranks {res[k][-1]:.0f} img/s" for k in counts)
            print(f"round {r + 1} {m}: 1 process {res[1][-1]:.0f} img/s, {ranks} (seed {seed:.0f} img/s)", flush=True)
    print(f"\nthroughput, global batch {args.batch}, median of {args.rounds} rounds of {args.steps} steps ({c} cores):")
    for m, res in results.items():
        one, seed = statistics.median(res[1]), statistics.median(res["seed"])
        line = (
            f"  {m:13s} 1 process {one:6.0f} img/s ({one / seed:.2f}x the seed's ResNet-18 pipeline, {seed:.0f} img/s)"
        )
        for k in counts:
            many = statistics.median(res[k])
            line += f" | {k} ranks {many:6.0f} img/s ({many / one:.2f}x 1 process, {many / seed:.2f}x the seed)"
        print(line)
    for n in counts:
        ar = under_torchrun(n, ["--worker", "allreduce", "--repeats", str(args.repeats)], max(1, c // n))
        print(f"\nGloo all-reduce over the loopback, {n} ranks (median of {args.repeats}):")
        for m, v in ar["models"].items():
            bus = 2 * (n - 1) / n * v["bytes"] / v["seconds"]
            print(
                f"  {m:13s} {v['parameters'] / 1e6:6.2f} M params = {v['bytes'] / 1e6:6.1f} MB: "
                f"{v['seconds'] * 1e3:7.1f} ms per step (bus bandwidth {bus / 1e9:.2f} GB/s)"
            )
    print("\na ring all-reduce on a cluster moves 2 (N-1)/N x the gradient per step through each node's link; N = 8:")
    for gbit in (10, 25, 100):
        link = gbit / 8 * 1e9
        cost = ", ".join(f"{m} {2 * 7 / 8 * v['bytes'] / link * 1e3:.1f} ms" for m, v in ar["models"].items())
        print(f"  {gbit:3d} Gbit/s: {cost}")


if __name__ == "__main__":
    main()
