"""Load test for `imgclf serve`, against the same model's offline throughput, measured in one run.

    nice -n 10 .venv/bin/python benchmarks/serve_load.py MODEL [--concurrency 32] [--requests 2000]

1. `imgclf serve MODEL --port 0` in a subprocess on 127.0.0.1, waited for until /ready, then `--warmup`
   requests (not counted).
2. The counted requests, in `--rounds` slices. Before each slice and after the last, with the server idle,
   this process measures the offline batch-32 throughput of the same file through the Runner (model only:
   `runner.logits` on a prepared batch of 32 real images, median of `--offline-batches`), so the offline and
   served numbers see the same machine even when other work on it comes and goes. The ratio is total served
   images / total served time against total offline images / total offline time. Once at the start: the whole
   offline pipeline (`Predictor.predict` on 32 files: decode, preprocess, model), for reference.
3. The load: `--concurrency` clients, each on its own keep-alive connection, sending one image per request
   (real images from `--images`, round robin) and waiting for the answer before sending the next. The client
   is a minimal HTTP/1.1 client on asyncio streams with the request bytes built beforehand, so it takes
   little CPU from the server it shares the machine with (its CPU per image is printed). Reported:
   throughput, errors, p50/p90/p99 latency, CPU per image of server and client against the offline run's,
   and the server's resident memory (VmRSS from /proc/PID/status) after the warm-up, its maximum (sampled
   every second) and at the end.
"""

from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import re
import shlex
import subprocess
import sys
import time

ROOT = os.path.dirname(os.path.dirname(os.path.abspath(__file__)))
DEFAULT_IMAGES = os.path.join(ROOT, "..", "shared", "data", "hymenoptera", "val")


def rss_mb(pid: int) -> float:
    with open(f"/proc/{pid}/status") as f:
        m = re.search(r"VmRSS:\s+(\d+) kB", f.read())
    return int(m.group(1)) / 1024 if m else float("nan")


def image_files(folder: str, limit: int) -> list[str]:
    files = sorted(
        p
        for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
        if p.lower().endswith((".jpg", ".jpeg", ".png"))
    )
    if not files:
        sys.exit(f"no images under {folder}")
    return files[:limit]


def offline_model(pred, files: list[str], rounds: int, batch: int = 32, cpu: list | None = None) -> float:
    """Images/s of `runner.logits` on a batch of `batch` real images, prepared beforehand (median of rounds).
    With `cpu`, appends the CPU seconds per image of the timed calls."""
    x = pred.normalize([pred._load(p) for p in (files * (batch // len(files) + 1))[:batch]])
    pred.logits(x)  # warm-up
    pred.logits(x)
    times = []
    c0 = os.times()
    for _ in range(rounds):
        t0 = time.perf_counter()
        pred.logits(x)
        times.append(time.perf_counter() - t0)
    c1 = os.times()
    if cpu is not None:
        cpu.append(((c1.user + c1.system) - (c0.user + c0.system)) / (rounds * batch))
    times.sort()
    return batch / times[len(times) // 2]


def offline(pred, files: list[str], rounds: int, batch: int = 32) -> dict:
    import torch

    model_ips = offline_model(pred, files, rounds, batch)
    chunk = (files * (batch // len(files) + 1))[:batch]
    pred.predict(chunk)  # warm-up of the pool
    ptimes = []
    for _ in range(max(1, rounds // 2)):
        t0 = time.perf_counter()
        pred.predict(chunk)
        ptimes.append(time.perf_counter() - t0)
    ptimes.sort()
    return {
        "model_images_per_s": model_ips,
        "pipeline_images_per_s": batch / ptimes[len(ptimes) // 2],
        "format": pred.runner.format,
        "model": pred.runner.model_name,
        "threads": torch.get_num_threads(),
    }


def build_request(path: str, host: str, port: int) -> bytes:
    boundary = "imgclfbenchboundary7d1f"
    with open(path, "rb") as f:
        data = f.read()
    name = os.path.basename(path)
    body = (
        (
            f'--{boundary}\r\nContent-Disposition: form-data; name="image"; filename="{name}"\r\n'
            f"Content-Type: image/jpeg\r\n\r\n"
        ).encode()
        + data
        + f"\r\n--{boundary}--\r\n".encode()
    )
    head = (
        f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: multipart/form-data; "
        f"boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n"
    ).encode()
    return head + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    body = await reader.readexactly(int(m.group(1))) if m else b""
    return status, body


async def load(
    host: str, port: int, requests: list[bytes], total: int, concurrency: int, keep_latencies: bool = False
) -> dict:
    counter = {"next": 0}
    latencies: list[float] = []
    errors: dict[str, int] = {}

    async def client(i: int):
        reader, writer = await asyncio.open_connection(host, port)
        try:
            while True:
                n = counter["next"]
                if n >= total:
                    return
                counter["next"] = n + 1
                t0 = time.perf_counter()
                try:
                    writer.write(requests[n % len(requests)])
                    status, body = await read_response(reader)
                except (OSError, asyncio.IncompleteReadError) as e:
                    errors[type(e).__name__] = errors.get(type(e).__name__, 0) + 1
                    writer.close()
                    reader, writer = await asyncio.open_connection(host, port)
                    continue
                latencies.append(time.perf_counter() - t0)
                if status != 200 or b'"predictions"' not in body:
                    key = f"HTTP {status}"
                    errors[key] = errors.get(key, 0) + 1
        finally:
            writer.close()

    t0 = time.perf_counter()
    await asyncio.gather(*[client(i) for i in range(concurrency)])
    wall = time.perf_counter() - t0
    latencies.sort()

    def pct(q):
        return latencies[min(len(latencies) - 1, int(q * len(latencies)))] * 1000 if latencies else float("nan")

    out = {
        "requests": total,
        "seconds": wall,
        "images_per_s": total / wall,
        "errors": sum(errors.values()),
        "error_kinds": errors,
        "p50_ms": pct(0.50),
        "p90_ms": pct(0.90),
        "p99_ms": pct(0.99),
        "max_ms": latencies[-1] * 1000 if latencies else float("nan"),
    }
    if keep_latencies:
        out["latencies"] = latencies
    return out


def metrics_summary(host: str, port: int) -> dict:
    import urllib.request

    text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()

    def val(name):
        m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
        return float(m.group(1)) if m else float("nan")

    n, s = val("imgclf_batch_size_count"), val("imgclf_batch_size_sum")
    return {
        "batches": n,
        "mean_batch_size": s / n if n else float("nan"),
        "images": val("imgclf_images_processed_total"),
    }


def ready_port(proc, host: str) -> int:
    """The port an `imgclf serve --port 0` process printed on its first line, once its /ready answers 200 (the
    benchmark stops in one line if it never does)."""
    import urllib.error
    import urllib.request

    line = proc.stdout.readline()
    m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
    if not m:
        sys.exit(f"server did not start: {line!r}")
    port = int(m.group(1))
    deadline = time.time() + 300
    while True:
        try:
            if urllib.request.urlopen(f"http://{host}:{port}/ready", timeout=5).status == 200:
                return port
        except (urllib.error.URLError, OSError):
            pass
        if time.time() > deadline or proc.poll() is not None:
            sys.exit("server never became ready")
        time.sleep(0.2)


def stop(proc) -> None:
    """The served model's process ended: SIGTERM, then SIGKILL after 30 s."""
    proc.terminate()
    try:
        proc.wait(30)
    except subprocess.TimeoutExpired:
        proc.kill()


def cpu_seconds(pid: int) -> float:
    """utime + stime of a process, all its threads, seconds."""
    with open(f"/proc/{pid}/stat") as f:
        fields = f.read().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="checkpoint or exported model")
    ap.add_argument(
        "--images", default=DEFAULT_IMAGES, help="folder of images to send [../shared/data/hymenoptera/val]"
    )
    ap.add_argument("--n-images", type=int, default=64, help="distinct images sent, round robin [64]")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--requests", type=int, default=2000, help="counted requests [2000]")
    ap.add_argument("--warmup", type=int, default=200, help="requests before counting and before the first RSS [200]")
    ap.add_argument(
        "--rounds",
        type=int,
        default=5,
        help="the counted requests are sent in this many slices, with the offline throughput measured "
        "before each and after the last, so both see the same machine even when its load drifts [5]",
    )
    ap.add_argument("--offline-batches", type=int, default=6, help="timed batches of 32 per offline measurement [6]")
    ap.add_argument("--skip-offline", action="store_true")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("--serve-args", default="", help='extra `imgclf serve` flags, e.g. "--threads 1"')
    a = ap.parse_args()
    from imgclf.compute.machine import env_block

    print(env_block(), flush=True)

    files = image_files(a.images, a.n_images)
    res = {
        "date": time.strftime("%Y-%m-%d %H:%M"),
        "model_file": a.model,
        "concurrency": a.concurrency,
        "serve_args": a.serve_args,
        "client": "asyncio streams, keep-alive, one image per request",
    }
    pred = None
    if not a.skip_offline:
        from imgclf.infer.predict import Predictor

        pred = Predictor(a.model, batch_size=32)
        res["offline_pipeline_images_per_s"] = offline(pred, files, a.offline_batches)["pipeline_images_per_s"]
        print(
            f"offline batch-32 whole pipeline (decode + preprocess + model, Predictor): "
            f"{res['offline_pipeline_images_per_s']:.1f} img/s",
            flush=True,
        )

    def measure_offline() -> tuple[float, float, float]:
        """(images/s, images, CPU seconds of this process) for the model alone on batches of 32."""
        cpu: list = []
        ips = offline_model(pred, files, a.offline_batches, cpu=cpu)
        return ips, 32 * a.offline_batches, cpu[0] * 32 * a.offline_batches

    host = "127.0.0.1"
    cmd = [sys.executable, "-m", "imgclf", "serve", a.model, "--host", host, "--port", "0", *shlex.split(a.serve_args)]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    offline_runs, served_runs = [], []
    try:
        port = ready_port(proc, host)
        reqs = [build_request(p, host, port) for p in files]
        res["server_rss_mb_ready"] = rss_mb(proc.pid)
        if a.warmup:
            asyncio.run(load(host, port, reqs, a.warmup, a.concurrency))
        res["server_rss_mb_after_warmup"] = rss_mb(proc.pid)
        peak = [res["server_rss_mb_after_warmup"]]

        async def served_slice(n):
            async def sampler():
                while True:
                    await asyncio.sleep(1.0)
                    peak[0] = max(peak[0], rss_mb(proc.pid))

            smp = asyncio.ensure_future(sampler())
            try:
                return await load(host, port, reqs, n, a.concurrency, keep_latencies=True)
            finally:
                smp.cancel()

        slices = [a.requests // a.rounds + (1 if i < a.requests % a.rounds else 0) for i in range(a.rounds)]
        for i, n in enumerate(slices):
            if pred is not None:
                offline_runs.append(measure_offline())
            s0, c0 = cpu_seconds(proc.pid), os.times()
            r = asyncio.run(served_slice(n))
            c1 = os.times()
            r["server_cpu_s"] = cpu_seconds(proc.pid) - s0
            r["client_cpu_s"] = (c1.user + c1.system) - (c0.user + c0.system)
            r["server_rss_mb"] = rss_mb(proc.pid)
            served_runs.append(r)
            print(
                f"slice {i + 1}/{a.rounds}: served {r['images_per_s']:.1f} img/s, server RSS {r['server_rss_mb']:.0f} MB"
                + (f", offline model {offline_runs[-1][0]:.1f} img/s just before" if pred is not None else ""),
                flush=True,
            )
        if pred is not None:
            offline_runs.append(measure_offline())
        res["server_rss_mb_max"] = max(peak[0], rss_mb(proc.pid))
        res["server_rss_mb_end"] = rss_mb(proc.pid)
        res["server_metrics"] = metrics_summary(host, port)
    finally:
        stop(proc)

    lat = sorted(x for r in served_runs for x in r.pop("latencies"))

    def pct(q):
        return lat[min(len(lat) - 1, int(q * len(lat)))] * 1000

    total, seconds = sum(r["requests"] for r in served_runs), sum(r["seconds"] for r in served_runs)
    errors = sum(r["errors"] for r in served_runs)
    kinds: dict = {}
    for r in served_runs:
        for k, v in r["error_kinds"].items():
            kinds[k] = kinds.get(k, 0) + v
    ld = res["load"] = {
        "requests": total,
        "seconds": seconds,
        "images_per_s": total / seconds,
        "errors": errors,
        "error_kinds": kinds,
        "p50_ms": pct(0.5),
        "p90_ms": pct(0.9),
        "p99_ms": pct(0.99),
        "max_ms": lat[-1] * 1000,
        "slices": served_runs,
    }
    server_cpu = sum(r["server_cpu_s"] for r in served_runs)
    client_cpu = sum(r["client_cpu_s"] for r in served_runs)
    ld["server_cpu_ms_per_image"] = 1000 * server_cpu / total
    ld["client_cpu_ms_per_image"] = 1000 * client_cpu / total
    print(
        f"served: {total} requests, {a.concurrency} concurrent clients, {seconds:.1f} s: "
        f"{ld['images_per_s']:.1f} img/s, errors {errors} {kinds or ''}"
    )
    print(
        f"latency p50 {ld['p50_ms']:.0f} ms, p90 {ld['p90_ms']:.0f} ms, p99 {ld['p99_ms']:.0f} ms "
        f"(p99/p50 {ld['p99_ms'] / ld['p50_ms']:.2f}), max {ld['max_ms']:.0f} ms"
    )
    sm = res["server_metrics"]
    print(
        f"server: {sm['batches']:.0f} batches, mean batch size {sm['mean_batch_size']:.1f}; CPU per image: server "
        f"{ld['server_cpu_ms_per_image']:.2f} ms, load client {ld['client_cpu_ms_per_image']:.2f} ms"
    )
    w, e, mx = res["server_rss_mb_after_warmup"], res["server_rss_mb_end"], res["server_rss_mb_max"]
    print(
        f"server RSS: ready {res['server_rss_mb_ready']:.0f} MB, after warm-up {w:.0f} MB, max {mx:.0f} MB, "
        f"end {e:.0f} MB (end/warm-up {e / w:.3f}, max/warm-up {mx / w:.3f})"
    )
    if offline_runs:
        off_imgs = sum(n for _, n, _ in offline_runs)
        off_secs = sum(n / ips for ips, n, _ in offline_runs)
        off_cpu = sum(c for _, _, c in offline_runs)
        o = res["offline"] = {
            "model_images_per_s": off_imgs / off_secs,
            "runs": [ips for ips, _, _ in offline_runs],
            "cpu_ms_per_image": 1000 * off_cpu / off_imgs,
        }
        per_slice = [
            r["images_per_s"] / ((offline_runs[i][0] + offline_runs[i + 1][0]) / 2) for i, r in enumerate(served_runs)
        ]
        res["ratio_to_offline_model"] = ld["images_per_s"] / o["model_images_per_s"]
        res["ratio_per_slice"] = per_slice
        res["ratio_to_offline_pipeline"] = ld["images_per_s"] / res["offline_pipeline_images_per_s"]
        res["cpu_efficiency_ratio"] = o["cpu_ms_per_image"] / (
            ld["server_cpu_ms_per_image"] + ld["client_cpu_ms_per_image"]
        )
        print(
            f"offline model-only batch-32: {o['model_images_per_s']:.1f} img/s overall ("
            + ", ".join(f"{x:.0f}" for x in o["runs"])
            + f"), CPU {o['cpu_ms_per_image']:.2f} ms per image"
        )
        print(
            f"served / offline model-only batch-32: {res['ratio_to_offline_model']:.2f} overall; per slice "
            + ", ".join(f"{x:.2f}" for x in per_slice)
            + f"; served / offline pipeline: "
            f"{res['ratio_to_offline_pipeline']:.2f}; offline CPU per image / served CPU per image (server + "
            f"client): {res['cpu_efficiency_ratio']:.2f}"
        )
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
