"""Batch prediction at scale: resident memory over a long list, kill + --resume, and torchrun's merged output.

    .venv/bin/python benchmarks/predict_stream.py WEIGHTS [-n 200000] [--kill-at 0.5] [--nproc 2]

1. The list: the CIFAR-10 JPEG train images (`--data`, sorted), repeated until it holds `-n` entries. Repeat r
   names each file through r extra "./" folders (`cifar10-jpg/././train/...`), so every entry is a distinct
   path to a real file and "each path exactly once" can be checked as written.
2. `imgclf predict WEIGHTS --files-from LIST --output one.parquet` in a subprocess (stdout to /dev/null). This
   process samples the child's resident memory (psutil, else VmRSS from /proc/PID/status) every 0.2 s and counts
   the rows done from the Parquet parts written so far (one every `--part-rows`, 10,000 by default). Printed:
   RSS when the first 10,000 rows are on disk, at the end (the last sample before the child exits, the merge
   included) and the most after the first 10,000, with their ratios to the first.
3. `--kill-at F`: the same command to kill.parquet, SIGKILLed once F of the rows are in its parts, then run again
   with --resume. Checked: the output lists every path of the list exactly once, in the list's order, and its
   rows equal one.parquet's.
4. `--nproc N`: the same command under `torchrun --standalone --nproc-per-node N` to two.parquet, compared with
   one.parquet: the same paths in the same order, equal labels, the largest probability difference, and
   whether the two files hold bit-identical values.

Every run gets the same threads per process (`--threads`, default: the cores divided by --nproc), so that the
one-process and the N-process runs execute the same kernels. No speeds are reported: the machine is shared.
"""

from __future__ import annotations

import argparse
import os
import signal
import subprocess
import sys
import threading
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_DATA = os.path.join(ROOT, "..", "shared", "data", "cifar10-jpg", "train")
FIRST = 10_000  # rows after which memory is taken as the reference


def rss_mib(pid: int) -> float | None:
    try:
        import psutil

        return psutil.Process(pid).memory_info().rss / 2**20
    except ImportError:
        pass
    except Exception:  # the process has gone
        return None
    try:
        with open(f"/proc/{pid}/status") as f:
            for line in f:
                if line.startswith("VmRSS:"):
                    return int(line.split()[1]) / 1024
    except OSError:
        return None
    return None


def write_list(data: str, n: int, path: str) -> list[str]:
    sys.path.insert(0, os.path.join(ROOT, "src"))
    from imgclf.infer.predict import walk_images

    base = sorted(os.path.relpath(p, data) for p in walk_images(data))
    if not base:
        sys.exit(f"no images under {data}")
    entries = [os.path.join(data, *(["."] * (i // len(base))), base[i % len(base)]) for i in range(n)]
    with open(path, "w") as f:
        f.writelines(e + "\n" for e in entries)
    return entries


class PartRows:
    """Rows in the finished Parquet parts of an output (each part's footer read once)."""

    def __init__(self, output: str):
        self.folder, self.seen = output + ".parts", {}

    def __call__(self) -> int:
        import pyarrow.parquet as pq

        try:
            names = [n for n in os.listdir(self.folder) if n.startswith("part-") and n.endswith(".parquet")]
        except OSError:
            return sum(self.seen.values())
        for n in names:
            if n not in self.seen:
                try:
                    self.seen[n] = pq.ParquetFile(os.path.join(self.folder, n)).metadata.num_rows
                except OSError:
                    continue
        return sum(self.seen.values())


def predict_cmd(args, output: str, *extra: str) -> list[str]:
    cmd = [sys.executable, "-m", "imgclf", "predict", args.weights, "--files-from", args.list, "--output", output]
    return cmd + [
        "--device",
        "cpu",
        "-q",
        "--batch-size",
        str(args.batch_size),
        "--part-rows",
        str(args.part_rows),
        *extra,
    ]


def env(args) -> dict:
    e = dict(os.environ, OMP_NUM_THREADS=str(args.threads))
    e["PYTHONPATH"] = os.path.join(ROOT, "src") + os.pathsep + e.get("PYTHONPATH", "")
    return e


def watched_run(args, cmd: list[str], output: str, kill_at_rows: int | None = None) -> dict:
    """Run `cmd`, sampling its memory and rows done; SIGKILL it once `kill_at_rows` rows are on disk."""
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=env(args))
    rows, samples, killed = PartRows(output), [], [False]

    def sample():
        while proc.poll() is None:
            mib, done = rss_mib(proc.pid), rows()
            if mib is not None:
                samples.append((done, mib))
            if kill_at_rows is not None and done >= kill_at_rows:
                proc.send_signal(signal.SIGKILL)
                killed[0] = True
                return
            time.sleep(0.2)

    t = threading.Thread(target=sample, daemon=True)
    t.start()
    rc = proc.wait()
    t.join()
    return {"rc": rc, "samples": samples, "killed": killed[0], "rows": rows()}


def memory_report(samples: list[tuple[int, float]]) -> None:
    after = [m for done, m in samples if done >= FIRST]
    if not after:
        print(f"memory: no sample after {FIRST} rows (fewer rows than that, or too short a run)")
        return
    first, end, peak = after[0], samples[-1][1], max(after)
    total = samples[-1][0]
    marks = sorted({max(FIRST, total * k // 10) for k in range(1, 11)})
    series = [next((f"{m // 1000}k: {mib:.0f}" for done, mib in samples if done >= m), "") for m in marks]
    print("RSS (MiB) by rows on disk: " + ", ".join(x for x in series if x))
    print(f"RSS at {FIRST:,} rows: {first:.1f} MiB")
    print(f"RSS at the end:       {end:.1f} MiB  (end / first {end / first:.3f})")
    print(f"RSS most after {FIRST:,}: {peak:.1f} MiB  (most / first {peak / first:.3f})")
    print(f"memory flat within 10%: {'yes' if peak <= 1.10 * first else 'NO'}")


def compare(a: str, b: str) -> tuple[bool, str]:
    import numpy as np
    import pyarrow.parquet as pq

    ta, tb = pq.read_table(a), pq.read_table(b)
    same_paths = ta.column("path").equals(tb.column("path"))
    same_labels = ta.column("label").equals(tb.column("label"))
    pa_, pb = (np.asarray(t.column("probability").to_numpy(zero_copy_only=False), dtype=np.float64) for t in (ta, tb))
    diff = float(np.nanmax(np.abs(pa_ - pb))) if len(pa_) and len(pa_) == len(pb) else float("nan")
    return ta.equals(tb), f"rows {ta.num_rows} / {tb.num_rows}, same paths in order: {same_paths}, " + (
        f"same labels: {same_labels}, largest probability difference: {diff:.3g}"
    )


def main() -> int:
    p = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    p.add_argument("weights", help="a checkpoint or an exported model")
    p.add_argument("-n", type=int, default=200_000, help="entries in the list [200000]")
    p.add_argument("--data", default=DEFAULT_DATA, help="images to repeat [../shared/data/cifar10-jpg/train]")
    p.add_argument("--work", default="/tmp/predict-stream-bench", help="folder for the list and the outputs")
    p.add_argument("--batch-size", type=int, default=64)
    p.add_argument("--part-rows", type=int, default=10_000)
    p.add_argument("--kill-at", type=float, help="kill a second run when this fraction of rows is done, then resume")
    p.add_argument("--nproc", type=int, help="also run under torchrun with this many processes and compare")
    p.add_argument("--threads", type=int, help="threads per process in every run [cores / --nproc]")
    args = p.parse_args()
    sys.stdout.reconfigure(line_buffering=True)  # each result as it comes, even into a file
    cores = len(os.sched_getaffinity(0))
    args.threads = args.threads or max(1, cores // (args.nproc or 1))
    os.makedirs(args.work, exist_ok=True)
    for name in ("one", "kill", "two"):
        out = os.path.join(args.work, f"{name}.parquet")
        subprocess.run(["rm", "-rf", out, out + ".parts"], check=True)
    args.list = os.path.join(args.work, "list.txt")
    entries = write_list(os.path.abspath(args.data), args.n, args.list)
    print(
        f"{len(entries):,} entries ({len(set(entries)):,} distinct paths), batch {args.batch_size}, "
        f"{args.threads} thread(s) per process, parts of {args.part_rows:,} rows"
    )
    ok = True

    one = os.path.join(args.work, "one.parquet")
    r = watched_run(args, predict_cmd(args, one), one)
    print(f"\n1 process -> {one}: exit {r['rc']}, {len(r['samples'])} memory samples")
    memory_report(r["samples"])
    ok &= r["rc"] == 0

    if args.kill_at is not None:
        kill = os.path.join(args.work, "kill.parquet")
        r = watched_run(args, predict_cmd(args, kill), kill, kill_at_rows=int(args.kill_at * args.n))
        print(
            f"\nkilled (SIGKILL) with {r['rows']:,} rows in parts (exit {r['rc']}); output exists: {os.path.exists(kill)}"
        )
        r2 = subprocess.run(predict_cmd(args, kill, "--resume"), stdout=subprocess.DEVNULL, env=env(args))
        import pyarrow.parquet as pq

        paths = pq.read_table(kill, columns=["path"]).column("path").to_pylist()
        once = len(paths) == len(set(paths)) == len(entries) and paths == entries
        same, detail = compare(one, kill)
        print(f"--resume: exit {r2.returncode}; every path exactly once, in order: {once}; equal to 1 process: {same}")
        print(f"  {detail}")
        ok &= r["killed"] and r2.returncode == 0 and once and same

    if args.nproc:
        two = os.path.join(args.work, "two.parquet")
        run = [sys.executable, "-m", "torch.distributed.run", "--standalone", f"--nproc-per-node={args.nproc}"]
        cmd = predict_cmd(args, two)
        r = subprocess.run([*run, "-m", "imgclf", *cmd[3:]], stdout=subprocess.DEVNULL, env=env(args))
        same, detail = compare(one, two)
        print(f"\ntorchrun {args.nproc} processes -> {two}: exit {r.returncode}; bit-identical to 1 process: {same}")
        print(f"  {detail}")
        ok &= r.returncode == 0 and same
    return 0 if ok else 1


if __name__ == "__main__":
    sys.exit(main())
