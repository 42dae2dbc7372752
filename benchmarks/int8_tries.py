"""Which int8 tries keep most labels: every candidate quantization of one checkpoint, judged as the onnx-int8
writer judges its tries (labels kept against eager fp32 on the verification images, RMSE of the logits).

What it measured decided the order of the writer's tries (exporting/int8.py, docs/benchmarks.md). Each candidate
is fully quantized unless it says so:
  minmax, entropy, percentile   the three calibration methods (the writer's first tries)
  percentile-99.99              CalibPercentile 99.99 instead of onnxruntime's 99.999
  <method>+symmetric            ActivationSymmetric (zero point in the middle of the uint8 range)
  minmax+moving-average         CalibMovingAverage (the batches' min/max averaged, not the extremes)
  <method>+ends-fp32            the first convolution and the last Gemm/MatMul left in fp32
  <method>+8-bit-weights        reduce_range off (exact only on CPUs with VNNI: see int8.py)
  minmax+calib-xN               N times --calib-images (where the training split has them)

    .venv/bin/python benchmarks/int8_tries.py runs/NAME/best.pt [--calib-images 256] [--verify-images 500]
        [--candidates minmax,entropy,...] [--json out.json]

The images/s column is one batch of 16 on whatever else the machine runs: a rough guide, not a result.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import tempfile

CANDIDATES = (
    "minmax,entropy,percentile,percentile-99.99,minmax+symmetric,entropy+symmetric,percentile+symmetric,"
    "minmax+moving-average,minmax+ends-fp32,entropy+ends-fp32,minmax+8-bit-weights,entropy+8-bit-weights,"
    "minmax+calib-x4"
)


def ends(pre: str) -> list[str]:
    """The first Conv and the last Gemm/MatMul of the graph: what is commonly kept in fp32."""
    import onnx

    nodes = onnx.load(pre).graph.node
    convs = [n.name for n in nodes if n.op_type == "Conv"]
    linears = [n.name for n in nodes if n.op_type in ("Gemm", "MatMul")]
    return convs[:1] + linears[-1:]


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("weights")
    ap.add_argument("--calib-images", type=int, default=256)
    ap.add_argument("--verify-images", type=int, default=500)
    ap.add_argument("--candidates", default=CANDIDATES)
    ap.add_argument("--json", help="also write the rows here")
    a = ap.parse_args()

    from onnxruntime.quantization.shape_inference import quant_pre_process

    from imgclf.compute.machine import env_block
    from imgclf.exporting.context import ExportContext, quiet
    from imgclf.exporting.export import _reference, _samples
    from imgclf.exporting.int8 import Quantizer, run_file
    from imgclf.exporting.outputs import feature_nodes
    from imgclf.exporting.verify import compare
    from imgclf.exporting.writers import onnx_fp32

    print(env_block())
    ref = _reference(a.weights, None)
    check, calib = _samples(ref, None, None, None, n_check=a.verify_images, n_calib=a.calib_images)
    images, checked_on = check.load()
    ctx = ExportContext(ref, images, calib)
    want = ctx.check_logits()
    work = tempfile.mkdtemp(prefix="int8-tries-")
    rows = []
    try:
        import onnx

        fp32, pre = os.path.join(work, "fp32.onnx"), os.path.join(work, "pre.onnx")
        onnx_fp32(ctx, fp32)
        with quiet():
            quant_pre_process(fp32, pre, skip_symbolic_shape=True)
        keep = feature_nodes(onnx.load(pre))
        cal = ctx.calib()
        print(f"verification: {checked_on}; calibration: {ctx.info['calib_data']}")
        print(f"{'candidate':28s} {'kept':>9s} {'RMSE':>7s} {'img/s':>7s}")
        quantizers: dict = {}
        for name in a.candidates.split(","):
            method, _, variant = name.partition("+")
            extra, exclude, reduce_range, n = {}, [], True, len(cal)
            if method == "percentile-99.99":
                method, extra = "percentile", {"CalibPercentile": 99.99}
            if variant == "symmetric":
                extra["ActivationSymmetric"] = True
            elif variant == "moving-average":
                extra["CalibMovingAverage"] = True
            elif variant == "ends-fp32":
                exclude = ends(pre)
            elif variant == "8-bit-weights":
                reduce_range = False
            elif variant.startswith("calib-x"):
                n = a.calib_images * int(variant[len("calib-x") :])
            key = (reduce_range, n)
            if key not in quantizers:
                imgs = cal if n == len(cal) else _samples(ref, None, None, None, n_check=1, n_calib=n)[1].load()[0]
                sub = os.path.join(work, f"q{len(quantizers)}")
                os.makedirs(sub)
                quantizers[key] = Quantizer(pre, imgs, sub, reduce_range=reduce_range, keep=keep)
            q = quantizers[key]
            logits, speed = run_file(q(method, exclude, extra), images)
            r = compare(want, logits, int8=True)
            row = {"candidate": name, "calib_images": len(q.images), "kept": r["top1_kept"], "images": r["images"]}
            row.update(rel_rmse=r["rel_rmse"], images_per_s=speed)
            rows.append(row)
            kept = f"{r['top1_kept']}/{r['images']}"
            print(f"{name:28s} {kept:>9s} {r['rel_rmse']:7.1%} {speed:7.1f}", flush=True)
    finally:
        shutil.rmtree(work, ignore_errors=True)
    if a.json:
        with open(a.json, "w") as f:
            json.dump(rows, f, indent=2)
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
