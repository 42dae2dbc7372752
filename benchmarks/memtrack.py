"""Peak resident memory of a command and of every process it starts (Linux /proc), for benchmarks/memory.py.

    .venv/bin/python benchmarks/memtrack.py [--interval 0.05] [--timeline F.csv] -- COMMAND...

Reports, for the process tree of COMMAND (it and all its descendants, followed while it runs):
- tree RSS peak: the largest sum of VmRSS over the tree at one sample (every --interval seconds). Pages that two
  processes share (a memory-mapped file, copy-on-write pages of a forked worker, shared libraries) count once per
  process, so this can exceed what the machine gives up; it is what `top`/`ps` users add up.
- tree PSS peak: the same with proportional set size (/proc/PID/smaps_rollup): a page shared by k processes counts
  1/k in each, so the sum is what the tree takes from the machine's memory (sampled less often: it costs more).
- largest process: the largest VmHWM (the kernel's own high-water mark of one process's resident memory, exact,
  not sampled) seen in the tree while it ran: one process, not a sum. Also resource.getrusage(RUSAGE_CHILDREN)
  .ru_maxrss after the command ends, the same mark for the waited-for children of this process, which is a
  maximum over everything this process ran so far (None when an earlier command's was larger).
"""

from __future__ import annotations

import argparse
import os
import resource
import subprocess
import sys
import time


def _children() -> dict[int, list[int]]:
    kids: dict[int, list[int]] = {}
    for name in os.listdir("/proc"):
        if not name.isdigit():
            continue
        try:
            with open(f"/proc/{name}/stat") as f:
                stat = f.read()
        except OSError:
            continue
        ppid = int(stat.rsplit(")", 1)[1].split()[1])
        kids.setdefault(ppid, []).append(int(name))
    return kids


def tree(pid: int) -> list[int]:
    kids, out, todo = _children(), [], [pid]
    while todo:
        p = todo.pop()
        out.append(p)
        todo += kids.get(p, [])
    return out


def _field(path: str, key: str) -> int:
    try:
        with open(path) as f:
            for line in f:
                if line.startswith(key):
                    return int(line.split()[1]) * 1024
    except (OSError, ValueError, IndexError):
        pass
    return 0


def rss(pid: int) -> int:
    return _field(f"/proc/{pid}/status", "VmRSS:")


def pss(pid: int) -> int:
    return _field(f"/proc/{pid}/smaps_rollup", "Pss:")


def measure(cmd: list[str], *, interval: float = 0.05, pss_every: int = 4, timeline=None, **popen) -> dict:
    """Run `cmd` to its end and return its peak memory (bytes), wall seconds and exit code."""
    before = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss
    start = time.perf_counter()
    proc = subprocess.Popen(cmd, **popen)
    peak_rss = peak_pss = peak_hwm = 0
    peak_procs = 0
    n = 0
    while proc.poll() is None:
        pids = tree(proc.pid)
        total = sum(rss(p) for p in pids)
        peak_rss = max(peak_rss, total)
        peak_procs = max(peak_procs, len(pids))
        peak_hwm = max([peak_hwm] + [_field(f"/proc/{p}/status", "VmHWM:") for p in pids])
        if n % pss_every == 0:
            peak_pss = max(peak_pss, sum(pss(p) for p in pids))
        if timeline is not None:
            timeline.write(f"{time.perf_counter() - start:.2f},{total},{len(pids)}\n")
        n += 1
        time.sleep(interval)
    wall = time.perf_counter() - start
    after = resource.getrusage(resource.RUSAGE_CHILDREN).ru_maxrss * 1024
    return {
        "rc": proc.returncode,
        "seconds": round(wall, 1),
        "tree_rss_peak": peak_rss,
        "tree_pss_peak": peak_pss,
        "largest_process_hwm": peak_hwm,
        "largest_process_maxrss": after if after > before * 1024 else None,  # None: an earlier child was larger
        "processes_max": peak_procs,
        "samples": n,
    }


def main(argv=None) -> int:
    ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--interval", type=float, default=0.05)
    ap.add_argument("--timeline", help="write t,tree_rss_bytes,processes per sample to this CSV")
    ap.add_argument("cmd", nargs=argparse.REMAINDER)
    a = ap.parse_args(argv)
    cmd = a.cmd[1:] if a.cmd[:1] == ["--"] else a.cmd
    tl = open(a.timeline, "w") if a.timeline else None
    try:
        r = measure(cmd, interval=a.interval, timeline=tl)
    finally:
        if tl:
            tl.close()
    gb = {
        k: (f"{v / 2**30:.2f} GiB" if isinstance(v, int) and k.endswith(("peak", "maxrss", "hwm")) else v)
        for k, v in r.items()
    }
    print(gb, file=sys.stderr)
    return r["rc"]


if __name__ == "__main__":
    sys.exit(main())
