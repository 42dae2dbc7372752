"""Load test for `imgclf serve`, against the same model's offline throughput, measured in one run.

    nice -n 10 .venv/bin/python benchmarks/serve_load.py MODEL [--concurrency 32] [--requests 2000]

1. Offline, in this process, before the server starts: the Runner's batch-32 throughput on real images
   (model only: `runner.logits` on a prepared N x 3 x S x S batch), and the whole offline pipeline
   (`Predictor.predict` on 32 files at a time: decode, preprocess, model).
2. `imgclf serve MODEL --port 0` in a subprocess on 127.0.0.1, waited for until /ready.
3. The load: `--concurrency` clients, each on its own keep-alive connection, sending one image per request
   (real images from `--images`, round robin) and waiting for the answer before sending the next.
   The client is a minimal HTTP/1.1 client on asyncio streams with the request bytes built beforehand, so
   it takes little CPU from the server it shares the machine with. `--warmup` requests first, not counted;
   then `--requests` counted ones: throughput, error count, p50/p90/p99 latency, and the server's resident
   memory (VmRSS from /proc/PID/status) after the warm-up, its maximum during the run, and at the end.
"""
from __future__ import annotations

import argparse
import asyncio
import glob
import json
import os
import re
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
    files = sorted(p for p in glob.glob(os.path.join(folder, "**", "*"), recursive=True)
                   if p.lower().endswith((".jpg", ".jpeg", ".png")))
    if not files:
        sys.exit(f"no images under {folder}")
    return files[:limit]


def offline(model: str, files: list[str], rounds: int, batch: int = 32) -> dict:
    import torch

    from imgclf.predict import Predictor

    pred = Predictor(model, batch_size=batch)
    x = torch.stack([pred._load(p) for p in (files * (batch // len(files) + 1))[:batch]])
    pred.logits(x)  # warm-up
    pred.logits(x)
    times = []
    for _ in range(rounds):
        t0 = time.perf_counter()
        pred.logits(x)
        times.append(time.perf_counter() - t0)
    times.sort()
    model_ips = batch / times[len(times) // 2]
    chunk = (files * (batch // len(files) + 1))[:batch]
    pred.predict(chunk)  # warm-up of the pool
    ptimes = []
    for _ in range(max(1, rounds // 2)):
        t0 = time.perf_counter()
        pred.predict(chunk)
        ptimes.append(time.perf_counter() - t0)
    ptimes.sort()
    return {"model_images_per_s": model_ips, "pipeline_images_per_s": batch / ptimes[len(ptimes) // 2],
            "format": pred.runner.format, "model": pred.runner.model_name, "threads": torch.get_num_threads()}


def build_request(path: str, host: str, port: int) -> bytes:
    boundary = "imgclfbenchboundary7d1f"
    with open(path, "rb") as f:
        data = f.read()
    name = os.path.basename(path)
    body = (f"--{boundary}\r\nContent-Disposition: form-data; name=\"image\"; filename=\"{name}\"\r\n"
            f"Content-Type: image/jpeg\r\n\r\n").encode() + data + f"\r\n--{boundary}--\r\n".encode()
    head = (f"POST /predict HTTP/1.1\r\nHost: {host}:{port}\r\nContent-Type: multipart/form-data; "
            f"boundary={boundary}\r\nContent-Length: {len(body)}\r\n\r\n").encode()
    return head + body


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    m = re.search(rb"(?i)\r\ncontent-length:\s*(\d+)", head)
    body = await reader.readexactly(int(m.group(1))) if m else b""
    return status, body


async def load(host: str, port: int, requests: list[bytes], total: int, concurrency: int) -> dict:
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

    return {"requests": total, "seconds": wall, "images_per_s": total / wall, "errors": sum(errors.values()),
            "error_kinds": errors, "p50_ms": pct(0.50), "p90_ms": pct(0.90), "p99_ms": pct(0.99),
            "max_ms": latencies[-1] * 1000 if latencies else float("nan")}


def metrics_summary(host: str, port: int) -> dict:
    import urllib.request

    text = urllib.request.urlopen(f"http://{host}:{port}/metrics", timeout=10).read().decode()

    def val(name):
        m = re.search(rf"^{name} ([0-9.e+]+)$", text, re.M)
        return float(m.group(1)) if m else float("nan")

    n, s = val("imgclf_batch_size_count"), val("imgclf_batch_size_sum")
    return {"batches": n, "mean_batch_size": s / n if n else float("nan"), "images": val("imgclf_images_processed_total")}


def main() -> None:
    ap = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    ap.add_argument("model", help="checkpoint or exported model")
    ap.add_argument("--images", default=DEFAULT_IMAGES, help="folder of images to send [../shared/data/hymenoptera/val]")
    ap.add_argument("--n-images", type=int, default=64, help="distinct images sent, round robin [64]")
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--requests", type=int, default=2000, help="counted requests [2000]")
    ap.add_argument("--warmup", type=int, default=200, help="requests before counting and before the first RSS [200]")
    ap.add_argument("--offline-rounds", type=int, default=10)
    ap.add_argument("--skip-offline", action="store_true")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    ap.add_argument("serve_args", nargs="*", help="extra `imgclf serve` flags, after --")
    a = ap.parse_args()

    files = image_files(a.images, a.n_images)
    res = {"date": time.strftime("%Y-%m-%d %H:%M"), "model_file": a.model, "concurrency": a.concurrency,
           "client": "asyncio streams, keep-alive, one image per request"}
    if not a.skip_offline:
        res["offline"] = offline(a.model, files, a.offline_rounds)
        print(f"offline batch-32: model {res['offline']['model_images_per_s']:.1f} img/s, whole pipeline "
              f"(decode + preprocess + model) {res['offline']['pipeline_images_per_s']:.1f} img/s", flush=True)

    host = "127.0.0.1"
    cmd = [sys.executable, "-m", "imgclf", "serve", a.model, "--host", host, "--port", "0", *a.serve_args]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True)
    try:
        line = proc.stdout.readline()
        m = re.search(r"http://127\.0\.0\.1:(\d+)", line)
        if not m:
            sys.exit(f"server did not start: {line!r}")
        port = int(m.group(1))
        import urllib.error
        import urllib.request

        deadline = time.time() + 300
        while True:
            try:
                if urllib.request.urlopen(f"http://{host}:{port}/ready", timeout=5).status == 200:
                    break
            except (urllib.error.URLError, OSError):
                pass
            if time.time() > deadline or proc.poll() is not None:
                sys.exit("server never became ready")
            time.sleep(0.2)
        reqs = [build_request(p, host, port) for p in files]
        res["server_rss_mb_ready"] = rss_mb(proc.pid)
        if a.warmup:
            asyncio.run(load(host, port, reqs, a.warmup, a.concurrency))
        res["server_rss_mb_after_warmup"] = rss_mb(proc.pid)

        peak = [res["server_rss_mb_after_warmup"]]

        async def run_and_sample():
            async def sampler():
                while True:
                    await asyncio.sleep(1.0)
                    peak[0] = max(peak[0], rss_mb(proc.pid))

            s = asyncio.ensure_future(sampler())
            try:
                return await load(host, port, reqs, a.requests, a.concurrency)
            finally:
                s.cancel()

        res["load"] = asyncio.run(run_and_sample())
        res["server_rss_mb_max"] = max(peak[0], rss_mb(proc.pid))
        res["server_rss_mb_end"] = rss_mb(proc.pid)
        res["server_metrics"] = metrics_summary(host, port)
    finally:
        proc.terminate()
        try:
            proc.wait(30)
        except subprocess.TimeoutExpired:
            proc.kill()

    ld = res["load"]
    print(f"served: {ld['requests']} requests, {a.concurrency} concurrent clients, {ld['seconds']:.1f} s: "
          f"{ld['images_per_s']:.1f} img/s, errors {ld['errors']} {ld['error_kinds'] or ''}")
    print(f"latency p50 {ld['p50_ms']:.0f} ms, p90 {ld['p90_ms']:.0f} ms, p99 {ld['p99_ms']:.0f} ms "
          f"(p99/p50 {ld['p99_ms'] / ld['p50_ms']:.2f}), max {ld['max_ms']:.0f} ms")
    sm = res["server_metrics"]
    print(f"server: {sm['batches']:.0f} batches, mean batch size {sm['mean_batch_size']:.1f}")
    w, e, mx = res["server_rss_mb_after_warmup"], res["server_rss_mb_end"], res["server_rss_mb_max"]
    print(f"server RSS: ready {res['server_rss_mb_ready']:.0f} MB, after warm-up {w:.0f} MB, max {mx:.0f} MB, "
          f"end {e:.0f} MB (end/warm-up {e / w:.3f}, max/warm-up {mx / w:.3f})")
    if "offline" in res:
        o = res["offline"]
        res["ratio_to_offline_model"] = ld["images_per_s"] / o["model_images_per_s"]
        res["ratio_to_offline_pipeline"] = ld["images_per_s"] / o["pipeline_images_per_s"]
        print(f"served / offline model-only batch-32: {res['ratio_to_offline_model']:.2f}; served / offline "
              f"pipeline: {res['ratio_to_offline_pipeline']:.2f}")
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)


if __name__ == "__main__":
    main()
