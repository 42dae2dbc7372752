"""The outputs of an ONNX export beside its logits: "features" (N x D L2-normalised penultimate features) and,
for a checkpoint with a kNN bank, "knn" (each image's distance to its k-th nearest bank row), core/ood.py's
OUTPUTS, so that the torch-free server applies every out-of-distribution rule of the checkpoint.

What is exported is `models/embedding.FeatureOutputs` around the reference's network (temperature and test-time
augmentation included): its logits are the network's, so the "logits" output is what it was. The bank is a
constant of the graph, kept in float16 as the checkpoint stores it and cast to float32 in the graph, so the
distances are the checkpoint's own numbers (the checkpoint's runner casts the same float16 values) at half the
size of a float32 constant: 10,000 x 1280 features (EfficientNet-Lite0) add 25.6 MB instead of 51 MB.

The graph passes that fold constants (the TorchScript-based exporter's, onnxruntime's in the int8 writer's
pre-processing) turn Cast(float16 bank) into a float32 constant again: `bank_as_float16` stores such a constant
back as float16 with a Cast, only where that is exact. `feature_nodes` names the nodes that compute features and
knn only (the normalisation, the product with the bank, TopK, the distance): the int8 writer leaves them fp32,
so the distances stay comparable with the thresholds fitted on float32 ones.
"""

from __future__ import annotations

import numpy as np
import torch

from imgclf.core import ood
from imgclf.infer.runtime import CheckpointRunner
from imgclf.models.embedding import FeatureOutputs

ONNX_FORMATS = ("onnx", "onnx-int8")  # the formats whose graph has the feature (and kNN) outputs
MIN_FLOAT16_ELEMENTS = 4096  # smaller constants are not worth a Cast node


def output_names(ref: CheckpointRunner) -> list[str]:
    """The ONNX graph's outputs, in order: logits, features, and knn where the checkpoint has a bank."""
    return list(ood.OUTPUTS if ref.bank is not None else ood.OUTPUTS[:2])


def knn_k(ref: CheckpointRunner) -> int | None:
    """The k of the reference's kNN score (its record's; by the bank's size where the record has none)."""
    if ref.bank is None:
        return None
    return int((ref.ood or {}).get("k") or ood.neighbours_for(len(ref.bank)))


def feature_module(ref: CheckpointRunner) -> FeatureOutputs:
    """What the ONNX writers export: the reference's net giving (logits, features[, knn]), the bank float16.
    In eval mode (the old exporter puts a module back in the mode it found it in). Call `.remove()` after."""
    return FeatureOutputs(ref.net, ref.model, ref.model_name, ref.bank, knn_k(ref), bank_dtype=_bank_dtype(ref)).eval()


def _bank_dtype(ref: CheckpointRunner):
    """float16 where the checkpoint's bank is float16 (as `imgclf train` stores it): kept as it is."""
    return torch.float16 if ref.bank is not None and ref.bank.dtype == torch.float16 else torch.float32


# --------------------------------------------------------------------------------------------- the graph


def graph_outputs(model) -> list[dict]:
    """The ONNX graph's outputs: name and shape ("batch" for the dynamic dimension), for the metadata."""
    rows = []
    for o in model.graph.output:
        dims = o.type.tensor_type.shape.dim
        rows.append(
            {"name": o.name, "shape": ["batch" if d.dim_param or not d.dim_value else d.dim_value for d in dims]}
        )
    return rows


def _ancestors(model, names: set[str]) -> set[int]:
    """The nodes (by index) that the tensors `names` are computed from."""
    producer = {o: i for i, n in enumerate(model.graph.node) for o in n.output}
    seen: set[int] = set()
    stack = [producer[t] for t in names if t in producer]
    while stack:
        i = stack.pop()
        if i not in seen:
            seen.add(i)
            stack += [producer[t] for t in model.graph.node[i].input if t in producer]
    return seen


def feature_nodes(model) -> list[str]:
    """The names of the nodes computing only the "features" and "knn" outputs (not the logits), in graph order.
    Every node of the graphs imgclf writes has a unique name (the quantizer excludes nodes by name)."""
    outs = {o.name for o in model.graph.output}
    extra = _ancestors(model, outs & set(ood.OUTPUTS[1:])) - _ancestors(model, {model.graph.output[0].name})
    return [n.name for i, n in enumerate(model.graph.node) if i in extra]


def _float16_exact(arr: np.ndarray) -> bool:
    return arr.dtype == np.float32 and arr.size >= MIN_FLOAT16_ELEMENTS and np.array_equal(arr.astype(np.float16), arr)


def bank_as_float16(model, nodes: list[str]) -> int:
    """Store the float32 constants that only `nodes` read, and whose values are exactly float16 (the bank), as
    float16 with a Cast to float32 in front of their readers: the same numbers, half the bytes. Returns the
    bytes saved."""
    import onnx  # noqa: PLC0415 - heavy; only the ONNX formats need it
    from onnx import helper, numpy_helper  # noqa: PLC0415 - as above

    g, inside = model.graph, set(nodes)
    readers: dict[str, set[str]] = {}
    for n in g.node:
        for i in n.input:
            readers.setdefault(i, set()).add(n.name)
    saved, casts = 0, []
    for init in list(g.initializer):
        arr = numpy_helper.to_array(init)
        if readers.get(init.name) and readers[init.name] <= inside and _float16_exact(arr):
            g.initializer.remove(init)
            g.initializer.append(numpy_helper.from_array(arr.astype(np.float16), init.name + "_float16"))
            casts.append(_cast(helper, onnx, init.name))
            saved += arr.nbytes // 2
    for n in g.node:
        if n.op_type == "Constant" and n.name in inside and len(n.attribute) == 1 and n.attribute[0].name == "value":
            arr = numpy_helper.to_array(n.attribute[0].t)
            if readers.get(n.output[0], set()) <= inside and _float16_exact(arr):
                n.attribute[0].t.CopyFrom(numpy_helper.from_array(arr.astype(np.float16)))
                out = n.output[0]
                n.output[0] = out + "_float16"
                casts.append(_cast(helper, onnx, out))
                saved += arr.nbytes // 2
    if casts:
        kept = list(g.node)
        del g.node[:]
        g.node.extend(casts + kept)  # Casts of initializers first; a Constant's Cast must follow it: sorted below
        _topological(g)
    return saved


def _cast(helper, onnx, name: str):
    """The Cast node making float32 `name` of its float16 copy `name`_float16 (named: the quantizer excludes by
    name)."""
    return helper.make_node("Cast", [name + "_float16"], [name], name=name + "_to_float32", to=onnx.TensorProto.FLOAT)


def _topological(g) -> None:
    """Put the graph's nodes in an order where every node follows the producers of its inputs."""
    producer = {o: i for i, n in enumerate(g.node) for o in n.output}
    nodes, done, order = list(g.node), set(), []

    def visit(i: int) -> None:
        stack = [(i, False)]
        while stack:
            j, expanded = stack.pop()
            if j in done:
                continue
            if expanded:
                done.add(j)
                order.append(nodes[j])
                continue
            stack.append((j, True))
            stack += [(producer[t], False) for t in nodes[j].input if t in producer and producer[t] not in done]

    for i in range(len(nodes)):
        visit(i)
    del g.node[:]
    g.node.extend(order)
