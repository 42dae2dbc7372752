"""Prediction and serving against the machine's ceiling, with each JPEG decoder, in one run.

    .venv/bin/python benchmarks/ceiling.py MODEL [--images DIR] [--n-predict 3000] [--requests 3000]

MODEL: an export or checkpoint (the issue's: `imgclf export BEST --format onnx-int8` of a Lite0 fine-tune).

1. The per-image CPU split, measured in this process on `--images` (hymenoptera's val photos): decode (the file
   to an upright RGB image at the reduced JPEG scale, `data.images.decode_image`, one thread), resize (the
   shorter side to the model's resize and the centre crop, one thread), model (batches of 32 normalised and run
   by the runner of the same Predictor `imgclf predict` uses, one call at a time: an ONNX file on the CPU
   single-threaded, as each of predict's lanes runs it, the cheapest per image; anything else on all the cores;
   the process's CPU time divided by the images). Decode is measured for both decoders: "turbo" (libjpeg-turbo through simplejpeg,
   the default) and "pillow" (simplejpeg switched off), in interleaved rounds.
2. The ceiling of each decoder: cores / (decode + resize + model) CPU seconds per image: the images/s the
   cores could give if they did nothing else and never waited.
3. For each decoder: `imgclf predict MODEL --files-from LIST --output OUT.csv` (the streaming path) in a child
   process on `--n-predict` paths (the images repeated); its images/s and CPU per image from the first batch on
   disk to the merged output in place (start-up excluded: opening the model, the first batch), and to the
   process's exit (the interpreter's shut-down included: ~0.9 s with PyTorch loaded). Then `imgclf serve MODEL` loaded by
   `--concurrency` clients
   (serve_load.py's client: keep-alive, one image per request, `--requests` counted after `--warmup`); its
   images/s, p50/p99 latency, errors, and its CPU per image, whose excess over decode + resize + model is
   printed as HTTP (the request's parsing, the multipart body, the JSON answer, the event loop).
Each images/s is printed as a fraction of its decoder's ceiling (the target: at least 0.90).
4. The baseline: predict with lanes (an ONNX file on the CPU runs single-threaded, one batch per core, each lane
   decoding its own) against predict as it ran before them (one batch at a time on every core, decode threads
   beside it), in `--baseline-rounds` interleaved rounds, and the ratio.
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
sys.path[:0] = [os.path.join(ROOT, "src"), HERE]

import serve_load  # noqa: E402 - benchmarks/serve_load.py: the HTTP client and the CPU counters

from imgclf.data import jpeg  # noqa: E402
from imgclf.data.images import check_pixels, check_shape, decode_image, resize_shorter  # noqa: E402

DECODERS = ("turbo", "pillow")
# a command line run with simplejpeg switched off in the child (how "pillow" runs predict and serve)
PILLOW_ONLY = "import sys, imgclf.data.jpeg as j; j.simplejpeg = None; from imgclf.cli.main import run; run()"
# predict as it ran before lanes (the baseline): every Predictor made with lanes=False, the default decoder
NO_LANES = (
    "import functools, imgclf.infer.predict as p; p.Predictor.__init__ = functools.partialmethod("
    "p.Predictor.__init__, lanes=False); from imgclf.cli.main import run; run()"
)


@contextlib.contextmanager
def decoder(name: str):
    saved = jpeg.simplejpeg
    if name == "pillow":
        jpeg.simplejpeg = None
    try:
        yield
    finally:
        jpeg.simplejpeg = saved


def imgclf_cmd(name: str) -> list[str]:
    code = {"turbo": None, "pillow": PILLOW_ONLY, "no-lanes": NO_LANES}[name]
    return [sys.executable, "-m", "imgclf"] if code is None else [sys.executable, "-c", code]


def child_env() -> dict:
    e = dict(os.environ)
    e["PYTHONPATH"] = os.path.join(ROOT, "src") + os.pathsep + e.get("PYTHONPATH", "")
    return e


def cpu_per_image(fn, items, rounds: int) -> float:
    """Median over `rounds` of this process's CPU seconds per item of `fn`."""
    out = []
    for _ in range(rounds):
        c0 = time.process_time()
        for x in items:
            fn(x)
        out.append((time.process_time() - c0) / len(items))
    return statistics.median(out)


def split(pred, files: list[str], rounds: int) -> dict:
    """CPU seconds per image: decode (each decoder), resize + crop, model (normalise + forward)."""
    p = pred.preprocess

    def check(w, h):
        check_pixels(w, h)
        check_shape(w, h, p.resize)

    def decode(f):
        return decode_image(f, p.resize, check=check)

    out = {}
    for r in range(rounds):  # interleaved, one round at a time, so both decoders see the same machine
        for d in DECODERS if r % 2 == 0 else reversed(DECODERS):
            with decoder(d):
                out.setdefault(d, []).append(cpu_per_image(decode, files, 1))
    res = {f"decode_{d}": statistics.median(v) for d, v in out.items()}
    decoded = [decode(f) for f in files]
    res["resize"] = cpu_per_image(
        lambda im: pred.crop(np.asarray(resize_shorter(im, p.resize, p.interpolation))), decoded, rounds
    )
    crops = [pred._load(f) for f in (files * (32 // len(files) + 1))[:32]]
    pred.runner.logits(pred.normalize(crops))  # warm-up
    c0, n = time.process_time(), 0
    for _ in range(rounds * 2):
        pred.runner.logits(pred.normalize(crops))
        n += len(crops)
    res["model"] = (time.process_time() - c0) / n
    return res


def run_predict(model: str, files: list[str], n: int, name: str, work: str, batch: int) -> dict:
    """`imgclf predict` on `n` paths in a child; images/s after its first batch of rows is on disk."""
    listed = os.path.join(work, "list.txt")
    with open(listed, "w") as f:
        f.writelines((files * (n // len(files) + 1))[i] + "\n" for i in range(n))
    out = os.path.join(work, f"predict-{name}-{len(os.listdir(work))}.csv")  # a new file for every run
    cmd = [*imgclf_cmd(name), "predict", model, "--files-from", listed, "--output", out, "-q"]
    cmd += ["--device", "cpu", "--batch-size", str(batch)]
    proc = subprocess.Popen(cmd, stdout=subprocess.DEVNULL, env=child_env())
    parts, first, cpu_first = out + ".parts", None, 0.0
    while first is None and proc.poll() is None:  # the first batch's rows are on disk: the clock starts
        if _rows(parts) >= batch:
            first, cpu_first = time.perf_counter(), serve_load.cpu_seconds(proc.pid)
        time.sleep(0.005)
    done, cpu_done = None, 0.0
    while done is None and proc.poll() is None:  # the merged output is in place: every row is the user's
        if os.path.exists(out):
            done, cpu_done = time.perf_counter(), serve_load.cpu_seconds(proc.pid) - cpu_first
        time.sleep(0.005)
    if proc.returncode is None:
        _, status, usage = os.wait4(proc.pid, 0)  # the child's CPU time, all its threads
        proc.returncode = os.waitstatus_to_exitcode(status)
        cpu = usage.ru_utime + usage.ru_stime - cpu_first
    end = time.perf_counter()
    if proc.returncode != 0:
        sys.exit(f"imgclf predict failed (exit {proc.returncode}): {' '.join(cmd)}")
    with open(out) as f:
        rows = sum(1 for _ in f) - 1
    if first is None:
        sys.exit(f"predict ran too briefly to time ({rows} rows): raise --n-predict")
    if done is None:
        sys.exit("predict exited before its output could be seen: raise --n-predict")
    n = rows - batch
    return {
        "images": rows,
        "images_per_s": n / (done - first),
        "cpu_per_image": cpu_done / n,
        "images_per_s_to_exit": n / (end - first),
        "cpu_per_image_to_exit": cpu / n,
    }


def _rows(parts: str) -> int:
    try:
        with os.scandir(parts) as it:
            for e in it:
                if e.name.startswith("rank-") and e.name.endswith(".csv"):
                    with open(e.path, "rb") as f:
                        return max(0, f.read().count(b"\n") - 1)  # read only until the first batch is in
    except OSError:
        pass
    return 0


def run_serve(model: str, files: list[str], name: str, a) -> dict:
    host = "127.0.0.1"
    cmd = [*imgclf_cmd(name), "serve", model, "--host", host, "--port", "0"]
    proc = subprocess.Popen(cmd, stdout=subprocess.PIPE, text=True, env=child_env())
    try:
        port = serve_load.ready_port(proc, host)
        reqs = [serve_load.build_request(p, host, port) for p in files]
        asyncio.run(serve_load.load(host, port, reqs, a.warmup, a.concurrency))
        s0 = serve_load.cpu_seconds(proc.pid)
        r = asyncio.run(serve_load.load(host, port, reqs, a.requests, a.concurrency))
        r["server_cpu_per_image"] = (serve_load.cpu_seconds(proc.pid) - s0) / a.requests
        return r
    finally:
        serve_load.stop(proc)


def lanes_vs_before(a, files: list[str], work: str, ceiling: float) -> dict:
    """predict with lanes (today's) against predict as it ran before them (`NO_LANES`), the default decoder,
    in `--baseline-rounds` interleaved rounds: the median images/s of each and their ratio."""
    got = {"turbo": [], "no-lanes": []}
    for r in range(a.baseline_rounds):
        for name in ("turbo", "no-lanes") if r % 2 == 0 else ("no-lanes", "turbo"):
            got[name].append(run_predict(a.model, files, a.n_predict, name, work, a.batch_size)["images_per_s"])
    now, before = statistics.median(got["turbo"]), statistics.median(got["no-lanes"])
    print(
        f"predict, {a.baseline_rounds} interleaved rounds: lanes {now:.1f} img/s ({now / ceiling:.3f} of the "
        f"ceiling), before lanes {before:.1f} img/s ({before / ceiling:.3f}): lanes / before {now / before:.2f}x",
        flush=True,
    )
    return {"rounds": got, "ratio": now / before}


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    ap.add_argument("model", help="checkpoint or export (the issue's: an onnx-int8 Lite0)")
    ap.add_argument("--images", default=serve_load.DEFAULT_IMAGES, help="photos [../shared/data/hymenoptera/val]")
    ap.add_argument("--n-images", type=int, default=153, help="distinct photos used [153]")
    ap.add_argument("--rounds", type=int, default=5, help="rounds of each CPU measurement [5]")
    ap.add_argument("--n-predict", type=int, default=3000, help="paths given to imgclf predict [3000]")
    ap.add_argument("--batch-size", type=int, default=32)
    ap.add_argument("--concurrency", type=int, default=32)
    ap.add_argument("--requests", type=int, default=3000, help="counted requests to the server [3000]")
    ap.add_argument("--warmup", type=int, default=300)
    ap.add_argument("--decoders", default=",".join(DECODERS), help="run predict and serve with these [turbo,pillow]")
    ap.add_argument("--baseline-rounds", type=int, default=3, help="predict with lanes against before them [3]")
    ap.add_argument("--json", metavar="FILE", help="also write the results as JSON")
    a = ap.parse_args()
    from imgclf.compute.machine import env_block
    from imgclf.infer.predict import Predictor

    print(env_block(), flush=True)
    if not jpeg.available():
        sys.exit("simplejpeg is not installed: pip install simplejpeg")
    files = serve_load.image_files(a.images, a.n_images)
    cores = len(os.sched_getaffinity(0))
    pred = Predictor(a.model, device="cpu", batch_size=32)
    s = split(pred, files, a.rounds)
    ceiling = {d: cores / (s[f"decode_{d}"] + s["resize"] + s["model"]) for d in DECODERS}
    print(
        f"\nper image, CPU ms: decode turbo {1e3 * s['decode_turbo']:.2f} / pillow {1e3 * s['decode_pillow']:.2f}, "
        f"resize + crop {1e3 * s['resize']:.2f}, model {1e3 * s['model']:.2f} ({pred.runner.format}, "
        f"{len(files)} photos)"
    )
    print(
        f"ceiling on {cores} cores: turbo {ceiling['turbo']:.1f} img/s, pillow {ceiling['pillow']:.1f} img/s "
        f"(turbo / pillow {ceiling['turbo'] / ceiling['pillow']:.3f})",
        flush=True,
    )
    res = {"split_cpu_s": s, "cores": cores, "ceiling": ceiling, "runs": {}}
    with tempfile.TemporaryDirectory(prefix="imgclf-ceiling-") as work:
        for d in a.decoders.split(","):
            p = run_predict(a.model, files, a.n_predict, d, work, a.batch_size)
            print(
                f"{d:<6} predict: {p['images_per_s']:.1f} img/s from its first batch to its output complete "
                f"({p['images']} rows): {p['images_per_s'] / ceiling[d]:.3f} of the ceiling; CPU "
                f"{1e3 * p['cpu_per_image']:.2f} ms per image; to the process's exit (the interpreter's shut-down "
                f"too) {p['images_per_s_to_exit']:.1f} img/s, {p['images_per_s_to_exit'] / ceiling[d]:.3f}",
                flush=True,
            )
            r = run_serve(a.model, files, d, a)
            http = r["server_cpu_per_image"] - (s[f"decode_{d}"] + s["resize"] + s["model"])
            print(
                f"{d:<6} serve ({a.concurrency} clients): {r['images_per_s']:.1f} img/s: "
                f"{r['images_per_s'] / ceiling[d]:.3f} of the ceiling; p50 {r['p50_ms']:.0f} ms, p99 "
                f"{r['p99_ms']:.0f} ms (p99/p50 {r['p99_ms'] / r['p50_ms']:.2f}), errors {r['errors']}; server CPU "
                f"{1e3 * r['server_cpu_per_image']:.2f} ms per image, of which HTTP {1e3 * http:.2f} ms",
                flush=True,
            )
            res["runs"][d] = {"predict": p, "serve": r, "http_cpu_s": http}
        if a.baseline_rounds:
            res["lanes_vs_before"] = lanes_vs_before(a, files, work, ceiling["turbo"])
    if a.json:
        with open(a.json, "w") as f:
            json.dump(res, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
