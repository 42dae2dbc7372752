"""The int8 writer's tries (exporting/int8.py `Tries`): it keeps trying until a file keeps the target share of
the labels, writes the best, and records every try with its labels kept and speed. The quantizer and the
candidate files are fakes (each try's logits are chosen by the test), so these run in milliseconds."""

from __future__ import annotations

from types import SimpleNamespace

import pytest
import torch

from imgclf.core.multilabel import MULTILABEL
from imgclf.exporting import int8
from imgclf.exporting.export import _int8_lines
from imgclf.exporting.int8 import Tries, target_labels


def _reference(n: int) -> torch.Tensor:
    """n x 2 logits: the first 8 images barely decided (margin 0.02), the rest clearly (margin 4)."""
    ref = torch.zeros(n, 2)
    ref[:, 0] = torch.where(torch.arange(n) < 8, 0.01, 2.0)
    ref[:, 1] = -ref[:, 0]
    return ref


class FakeQuantizer:
    """quantize(method, nodes, extra) -> a file name that says which try it is; `flips[key]` says how many of the
    barely decided images that try's file flips, and `noise[key]` how much it moves every logit. A try with 8-bit
    weights has the key (method, nodes, 8)."""

    def __init__(self, flips: dict, noise: dict | None = None):
        self.flips, self.noise = flips, noise or {}
        self.pre, self.work, self.keep, self.images = "pre.onnx", "work", [], torch.zeros(4, 3, 8, 8)
        self.calls: list[tuple] = []
        self.extras: list[dict | None] = []

    def __call__(self, method: str, nodes: list[str], extra: dict | None = None, *, eight_bit: bool = False) -> str:
        key = (method, len(nodes)) + ((8,) if eight_bit else ())
        self.calls.append(key)
        self.extras.append(extra)
        if self.flips.get(key) == "fails":
            raise ValueError("Too many bins for data range. Cannot create 2048 finite-sized bins.")
        return "|".join(map(str, key))


def _setup(
    monkeypatch, n: int, flips: dict, *, tries=6, target=0.99, noise=None, speed=None, reduce_range=True, vnni=True
):
    ref = _reference(n)
    q = FakeQuantizer(flips, noise)

    def run_file(file, x):
        method, nodes, *bits = file.split("|")
        key = (method, int(nodes)) + tuple(map(int, bits))
        out = ref + q.noise.get(key, 0.001)  # a shift moves the RMSE, never a label
        out[: q.flips.get(key, 0)] = -ref[: q.flips.get(key, 0)]
        return out, (speed or {}).get(key, 100.0 - 10 * int(nodes))

    def sensitivity(pre, file, images, work):  # the measured ranking: tensors t1..t4, one node each
        return [
            {"tensor": f"t{i}", "error": 0.5, "error_above": 0.0, "added": 0.5, "nodes": [f"n{i}"]} for i in range(4)
        ]

    monkeypatch.setattr(int8, "run_file", run_file)
    monkeypatch.setattr(int8, "int8_sensitivity", sensitivity)
    monkeypatch.setattr(int8, "int8_8bit_exact", lambda: vnni)
    ctx = SimpleNamespace(
        check=torch.zeros(n, 3, 8, 8),
        int8_tries=tries,
        int8_target=target,
        calib_method="minmax",
        reduce_range=reduce_range,
        info={},
        ref=SimpleNamespace(task="single", thresholds=None),
    )
    return Tries(ctx, q, ref), q


def _run(t: Tries) -> dict:
    t.calibrations()
    t.fp32_tensors()
    return t.best()


def test_target_labels():
    assert target_labels(0.99, 153) == 152  # one image may flip
    assert target_labels(0.99, 100) == 99
    assert target_labels(0.99, 64) == 64
    assert target_labels(0.99, 99) == 99  # 98/99 = 98.99%: below 99%, so every label
    assert target_labels(1.0, 500) == 500 and target_labels(0.97, 153) == 149


def test_a_try_that_meets_the_bar_is_not_the_end(monkeypatch):
    # minmax keeps 150/153 (98.0%: the bar of 97% is met, the target of 99% is not), entropy 151, percentile all
    t, q = _setup(monkeypatch, 153, {("minmax", 0): 3, ("entropy", 0): 2, ("percentile", 0): 0})
    best = _run(t)
    assert t.made[0]["meets_bar"] and not t.made[0]["reached_target"]
    assert q.calls == [("minmax", 0), ("entropy", 0), ("percentile", 0)]  # stopped at the target: no fp32 tries
    assert best["calibration"] == "percentile" and best["top1_kept"] == 153 and best["reached_target"]


def test_it_stops_at_the_target(monkeypatch):
    t, q = _setup(monkeypatch, 153, {("minmax", 0): 1})  # 152/153 = 99.3%
    assert _run(t)["calibration"] == "minmax" and q.calls == [("minmax", 0)]
    t, q = _setup(monkeypatch, 64, {("minmax", 0): 1})  # 63/64 = 98.4%: under 99%, so it goes on
    assert _run(t)["calibration"] == "entropy" and q.calls == [("minmax", 0), ("entropy", 0)]


def test_the_best_try_is_written_when_the_target_is_never_reached(monkeypatch):
    flips = {("minmax", 0): 4, ("entropy", 0): 3, ("percentile", 0): 5, ("entropy", 1): 2, ("entropy", 2): 2}
    flips[("entropy", 4)] = 3
    t, q = _setup(monkeypatch, 153, flips, noise={("entropy", 2): 0.0001})
    best = _run(t)
    # the fp32 tries start from the fully quantized try with the lowest RMSE (all alike here but for the flips)
    assert len(t.made) == 6 and not any(x["reached_target"] for x in t.made)
    # most labels kept (151), then fewer fp32 nodes (1 rather than 2, though 2 has the lower RMSE)
    assert best is t.made[3] and best["fp32_nodes"] == ["n0"] and best["top1_kept"] == 151


def test_the_record_lists_every_try_with_labels_kept_and_speed(monkeypatch):
    t, q = _setup(
        monkeypatch, 153, {("minmax", 0): 3, ("entropy", 0): 2}, speed={("minmax", 0): 200.0, ("entropy", 0): 150.0}
    )
    best = _run(t)
    rec = t.record(best)
    assert [x["top1_kept"] for x in rec["tries"]] == [150, 151, 153]
    assert [x["images_per_s"] for x in rec["tries"]] == [200.0, 150.0, 100.0]
    assert [x["speed_vs_first"] for x in rec["tries"]] == [1.0, 0.75, 0.5]
    assert all("file" not in x for x in rec["tries"])
    assert rec["chosen_try"] == 3 and rec["target"] == {
        "agreement": 0.99,
        "labels": 152,
        "of": 153,
        "reached": True,
        "stopped": "target reached",
    }
    text = "\n".join(_int8_lines(rec))
    assert "int8 target: 152/153 labels kept (99%): reached" in text
    assert "1. minmax: 150/153 kept" in text and "2. entropy: 151/153 kept" in text and "0.75x" in text
    assert "3. percentile: 153/153 kept, RMSE" in text and "0.50x  <- written" in text


def test_tries_are_limited(monkeypatch):
    t, q = _setup(monkeypatch, 153, {("minmax", 0): 3, ("entropy", 0): 3, ("percentile", 0): 3}, tries=2)
    _run(t)
    assert q.calls == [("minmax", 0), ("entropy", 0)]
    t, q = _setup(monkeypatch, 153, {("minmax", 0): 3}, target=0.98)  # 150/153 = 98.04%
    _run(t)
    assert q.calls == [("minmax", 0)]


def test_multilabel_models_go_through_the_same_loop(monkeypatch):
    t, q = _setup(monkeypatch, 60, {("minmax", 0): 1, ("entropy", 0): 0})
    t.ctx.ref = SimpleNamespace(task=MULTILABEL, thresholds=[0.5, 0.5])
    best = _run(t)
    # 60 images x 2 labels: one image flipped changes both its decisions (118/120 < 99%), then all kept
    assert [x["labels_kept"] for x in t.made] == [118, 120] and t.made[0]["label_decisions"] == 120
    assert best["calibration"] == "entropy" and best["reached_target"]


@pytest.mark.parametrize("target", [0.0, 1.5])
def test_a_target_outside_0_to_1_is_refused_before_any_work(target, tmp_path):
    from imgclf.core.errors import UsageError
    from imgclf.exporting.export import export

    with pytest.raises(UsageError, match="--int8-target"):
        export(str(tmp_path / "missing.pt"), "onnx-int8", int8_target=target)


def test_a_planned_variant_is_tried_on_the_best_method_before_any_tensor_is_kept_fp32(monkeypatch):
    t, q = _setup(monkeypatch, 153, {("minmax", 0): 3, ("entropy", 0): 2, ("percentile", 0): 4}, tries=5)
    monkeypatch.setattr(int8, "PLAN_VARIANTS", (("symmetric", None),))
    _run(t)
    assert [x["variant"] for x in t.made[:4]] == ["", "", "", "symmetric"]
    assert t.made[3]["calibration"] == "entropy" and q.extras[3] == {"ActivationSymmetric": True}
    # then the fp32 tries, on the fully quantized try with the lowest RMSE, its variant included
    assert t.made[4]["fp32_nodes"] == ["n0"] and t.made[4]["variant"] == t.base["variant"]
    assert q.extras[4] == int8.VARIANTS[t.base["variant"]]


def test_a_try_onnxruntime_cannot_make_is_recorded_and_the_tries_go_on(monkeypatch):
    # onnxruntime's percentile calibrator raised this on a Lite0 fine-tune; that try is skipped, not the export
    t, q = _setup(monkeypatch, 153, {("minmax", 0): 3, ("entropy", 0): 2, ("percentile", 0): "fails"})
    best = _run(t)
    assert "Too many bins" in t.made[2]["failed"] and t.made[2]["top1_kept"] == 0
    assert t.made[3]["fp32_nodes"] == ["n0"] and t.base is t.made[1] and best is t.made[3]
    text = "\n".join(_int8_lines(t.record(best)))
    assert "3. percentile: failed (ValueError: Too many bins" in text


# ------------------------------------------------------------------------------------------------ 8-bit weights
SEVEN_BIT_MISSES = {("minmax", 0): 2, ("entropy", 0): 3, ("percentile", 0): 2}  # 151/153 at best: target 152


def test_by_default_an_8bit_try_follows_the_calibrations_where_the_cpu_computes_it_exactly(monkeypatch):
    """Hymenoptera's Lite0: 151 of 153 kept with 7-bit weights whatever the calibration, 152 with 8-bit."""
    t, q = _setup(monkeypatch, 153, {**SEVEN_BIT_MISSES, ("minmax", 0, 8): 1}, reduce_range=None)
    best = _run(t)
    assert q.calls == [("minmax", 0), ("entropy", 0), ("percentile", 0), ("minmax", 0, 8)]  # the target: stop
    assert best is t.made[3] and best["weight_bits"] == 8 and best["reached_target"]
    rec = t.record(best)
    assert rec["reduce_range"] is False and rec["weights"] == "int8 per-channel, 8-bit range"
    assert [x["weight_bits"] for x in rec["tries"]] == [7, 7, 7, 8]


@pytest.mark.parametrize(("reduce_range", "vnni"), [(None, False), (True, True)])
def test_no_8bit_try_without_vnni_or_with_reduce_range(monkeypatch, reduce_range, vnni):
    t, q = _setup(monkeypatch, 153, {**SEVEN_BIT_MISSES, ("minmax", 0, 8): 1}, reduce_range=reduce_range, vnni=vnni)
    best = _run(t)
    assert not any(len(c) == 3 for c in q.calls) and best["weight_bits"] == 7
    assert t.record(best)["reduce_range"] is True


def test_an_8bit_try_that_keeps_no_more_labels_is_not_written(monkeypatch):
    """7-bit weights run right on every CPU: on a tie in labels kept they win, whatever the RMSE."""
    flips, noise = {**SEVEN_BIT_MISSES, ("minmax", 0, 8): 2}, {("minmax", 0, 8): 0.0001}
    t, q = _setup(monkeypatch, 153, flips, noise=noise, tries=4, reduce_range=None)
    best = _run(t)
    assert q.calls[-1] == ("minmax", 0, 8) and best["weight_bits"] == 7 and best["top1_kept"] == 151


def test_no_reduce_range_makes_every_try_8bit(monkeypatch):
    t, q = _setup(monkeypatch, 153, {("minmax", 0): 0}, reduce_range=False)
    best = _run(t)
    assert best["weight_bits"] == 8 and t.record(best)["reduce_range"] is False


def test_the_layers_kept_fp32_go_on_7bit_weights_unless_the_8bit_try_kept_more(monkeypatch):
    """CIFAR-10's airnet: the 8-bit try tied the best 7-bit one (493/500) with a lower RMSE; a try with 2 nodes fp32
    on it kept one label more, so an 8-bit file was written for one image of 500: the fp32 tries start from the
    7-bit try then."""
    flips = {**SEVEN_BIT_MISSES, ("minmax", 0, 8): 2}
    t, q = _setup(monkeypatch, 153, flips, noise={("minmax", 0, 8): 0.0001}, reduce_range=None)
    best = _run(t)
    assert q.calls[3:] == [("minmax", 0, 8), ("minmax", 1)]  # on the 7-bit minmax try; it reached the target
    assert best["weight_bits"] == 7
    flips[("minmax", 0, 8)] = 1  # 8-bit kept more (152, the target): written, no fp32 tries
    t, q = _setup(monkeypatch, 153, flips, reduce_range=None)
    assert _run(t)["weight_bits"] == 8 and len(q.calls) == 4
