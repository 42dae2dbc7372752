"""Where an int8 ONNX model loses its accuracy, measured tensor by tensor, and what to leave out of quantization
to keep a tensor fp32: the int8 writer's remedy when quantizing everything misses the bar (int8.py)."""

from __future__ import annotations

import os

import numpy as np
import torch

from imgclf.infer.runtime import onnx_session_options

# ops that make nothing new of one activation (they move, select, clip or pool it): the quantizer carries a
# tensor's scale across them, so a tensor kept in fp32 keeps the chain through them in fp32 too
PASS_THROUGH = frozenset(
    {
        "Relu",
        "Clip",
        "LeakyRelu",
        "Identity",
        "Reshape",
        "Flatten",
        "Transpose",
        "Squeeze",
        "Unsqueeze",
        "MaxPool",
        "Slice",
        "Pad",
        "Concat",
        "Split",
        "Gather",
        "Expand",
        "Tile",
        "Resize",
        "DepthToSpace",
        "SpaceToDepth",
    }
)
QUANTIZED_OUTPUT_SUFFIX = "_QuantizeLinear_Input"  # the quantizer's name for a graph output it quantizes


class Graph:
    """The producer and consumers of each tensor of an ONNX graph."""

    def __init__(self, model):
        g = model.graph
        self.order = {n.name: i for i, n in enumerate(g.node)}
        self.initializers = {i.name for i in g.initializer}
        self.inputs = [i.name for i in g.input if i.name not in self.initializers]
        self.producer: dict = {}
        self.consumers: dict[str, list] = {}
        for n in g.node:
            for o in n.output:
                self.producer[o] = n
            for i in n.input:
                if i:
                    self.consumers.setdefault(i, []).append(n)

    def tensors(self) -> set[str]:
        return set(self.inputs) | set(self.producer)

    def fp32_region(self, tensor: str) -> list[str]:
        """The nodes to leave out of quantization so that `tensor` stays fp32. onnxruntime's QDQ quantizer
        quantizes a tensor when its producer or any consumer is quantized, so: both, and on through
        pass-through ops to the next computing node either way (measured on a tiny CNN with an outlier
        channel: leaving out the producer or the consumer alone changed nothing; both fixed it)."""
        region: set[str] = set()
        stack = [("up", self.producer[tensor])] if tensor in self.producer else []
        stack += [("down", c) for c in self.consumers.get(tensor, [])]
        while stack:
            way, n = stack.pop()
            if n.name in region:
                continue
            region.add(n.name)
            if n.op_type not in PASS_THROUGH:
                continue
            if way == "up":
                stack += [("up", self.producer[i]) for i in n.input if i in self.producer]
            else:
                stack += [("down", c) for o in n.output for c in self.consumers.get(o, [])]
        return sorted((n for n in region if n), key=self.order.__getitem__)  # a nameless node cannot be left out

    def upstream(self, tensor: str, marked) -> set[str]:
        """The `marked` tensors nearest above `tensor`: what its producer computes from."""
        found, seen = set(), set()
        stack = [i for i in self.producer[tensor].input if i] if tensor in self.producer else []
        while stack:
            t = stack.pop()
            if t in seen or t in self.initializers:
                continue
            seen.add(t)
            if t in marked:
                found.add(t)
            elif t in self.producer:
                stack += [i for i in self.producer[t].input if i]
        return found


def channel_error(err: np.ndarray, sig: np.ndarray) -> float:
    """Mean over channels of min(1, error power / signal power). Per channel, because one channel with a large
    range can take a per-tensor scale for itself and round every other channel to zero, which a whole-tensor
    ratio would not see; capped at 1 (a channel turned to noise). Channels dead in fp32 (power under 1e-6 of
    the median live channel's: ReLU outputs that are always 0) do not count."""
    alive = sig[sig > 0]
    if not alive.size:
        return 0.0
    live = sig > 1e-6 * float(np.median(alive))
    return float(np.minimum(1.0, err[live] / sig[live]).mean())


class Taps:
    """The activations a QDQ model quantizes, read back from both models: each one's QuantizeLinear output in the
    int8 model, and the same tensor in the fp32 model, exposed as extra graph outputs of copies saved in `work`.

    Extra outputs leave onnxruntime's fusion into QLinearConv, QGemm and the rest as it was (checked: same logits
    with and without them), so saturation or rounding of a particular CPU's kernels counts, unlike
    `onnxruntime.quantization.qdq_loss_debug.collect_activations`, which runs the unfused graph."""

    def __init__(self, fp32_path: str, int8_path: str, work: str):
        import onnx  # noqa: PLC0415 - heavy; only the int8 export needs it
        from onnx import numpy_helper  # noqa: PLC0415 - as above

        fm, qm = onnx.load(fp32_path), onnx.load(int8_path)
        self.graph = Graph(fm)
        known = self.graph.tensors()
        qinit = {i.name: numpy_helper.to_array(i) for i in qm.graph.initializer}
        self.taps: dict[str, tuple] = {}  # fp32 tensor -> (its quantized tensor in the int8 model, scale, zero point)
        for n in qm.graph.node:
            if n.op_type != "QuantizeLinear" or n.input[0] in qinit or len(n.input) < 3:
                continue
            name = n.input[0]
            if name not in known and name.endswith(QUANTIZED_OUTPUT_SUFFIX):  # a graph output, renamed
                name = name[: -len(QUANTIZED_OUTPUT_SUFFIX)]
            if name in known and n.input[1] in qinit and n.input[2] in qinit:
                self.taps[name] = (n.output[0], qinit[n.input[1]].astype(np.float32), qinit[n.input[2]])
        self.fp32_names = [t for t in self.taps if t not in self.graph.inputs]  # graph inputs: the images themselves
        if self.taps:
            self._open(fm, qm, work)

    def _open(self, fm, qm, work: str) -> None:
        """Both models with the tapped tensors as outputs, saved in `work` and opened in onnxruntime."""
        import onnx  # noqa: PLC0415 - heavy; only the int8 export needs it
        import onnxruntime as ort  # noqa: PLC0415 - as above
        from onnx import helper  # noqa: PLC0415 - as above

        have = {o.name for o in qm.graph.output}
        for qname, _, zp in self.taps.values():
            if qname not in have:
                qm.graph.output.append(
                    helper.make_tensor_value_info(qname, helper.np_dtype_to_tensor_dtype(zp.dtype), None)
                )
        have = {o.name for o in fm.graph.output}
        for t in self.fp32_names:
            if t not in have:
                fm.graph.output.append(helper.make_tensor_value_info(t, onnx.TensorProto.FLOAT, None))
        qpath, fpath = os.path.join(work, "taps-int8.onnx"), os.path.join(work, "taps-fp32.onnx")
        onnx.save(qm, qpath)
        onnx.save(fm, fpath)
        so = onnx_session_options()
        self.int8 = ort.InferenceSession(qpath, so, providers=["CPUExecutionProvider"])
        self.fp32 = ort.InferenceSession(fpath, so, providers=["CPUExecutionProvider"])

    def errors(self, images: torch.Tensor, batch: int) -> dict[str, float]:
        """Each tapped tensor's `channel_error` on `images`: the int8 value read back (dequantized) against fp32."""
        g, taps = self.graph, self.taps
        qnames = [taps[t][0] for t in taps]
        err: dict[str, np.ndarray] = {}
        sig: dict[str, np.ndarray] = {}
        for i in range(0, len(images), batch):  # a few images at a time: every activation of a batch is held at once
            x = images[i : i + batch].numpy()
            feed = {g.inputs[0]: x}
            ref = dict(zip(self.fp32_names, self.fp32.run(self.fp32_names, feed)))
            ref.update({t: x for t in taps if t in g.inputs})
            for t, q in zip(taps, self.int8.run(qnames, feed)):
                _, scale, zp = taps[t]
                f = np.asarray(ref[t], dtype=np.float32)
                if q.shape != f.shape:
                    continue
                d = (q.astype(np.float32) - zp.astype(np.float32)) * scale - f
                axes = tuple(a for a in range(f.ndim) if a != 1) if f.ndim >= 2 else None  # per channel (NC...)
                err[t] = err.get(t, 0.0) + np.atleast_1d((d.astype(np.float64) ** 2).sum(axis=axes))
                sig[t] = sig.get(t, 0.0) + np.atleast_1d((f.astype(np.float64) ** 2).sum(axis=axes))
        return {t: channel_error(err[t], sig[t]) for t in err}


def int8_sensitivity(fp32_path: str, int8_path: str, images: torch.Tensor, work: str, *, batch: int = 8) -> list[dict]:
    """Where a QDQ model (`int8_path`, quantized from `fp32_path`) loses its accuracy, measured: every activation
    it quantizes is read back as the int8 kernels onnxruntime really runs compute it, and compared with the same
    tensor of the fp32 model on `images` (`Taps`).

    Each tensor's error is `channel_error`; what quantizing it added is that less the largest error of the
    quantized tensors its producer computes from. Returns one row per tensor, most added error first: tensor,
    error, error_above, added, and `nodes` (`Graph.fp32_region`: what to leave out to keep it fp32)."""
    taps = Taps(fp32_path, int8_path, work)
    if not taps.taps:
        return []
    error, g = taps.errors(images, batch), taps.graph
    rows = []
    for t, e in error.items():
        above = max((error[u] for u in g.upstream(t, error)), default=0.0)
        rows.append({"tensor": t, "error": e, "error_above": above, "added": e - above, "nodes": g.fp32_region(t)})
    return sorted(rows, key=lambda r: -r["added"])


def fp32_regions(ranking: list[dict]) -> list[dict]:
    """The ranking's tensors that added error, each with nodes not already kept fp32 by one above it."""
    out, covered = [], set()
    for r in ranking:
        if r["added"] > 0 and r["nodes"] and not set(r["nodes"]) <= covered:
            out.append(r)
            covered |= set(r["nodes"])
    return out
