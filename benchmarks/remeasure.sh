#!/usr/bin/env bash
# Re-measure the headline numbers on the machine at hand, for its section of docs/benchmarks.md (issue 10):
# `--recipe fast --time-budget 15` (3 seeds) and 5 (fp32 against auto), training throughput against the seed,
# export speed (ResNet-18 at 224 px) and serving under load (Lite0 onnx-int8). About 75 minutes on 2 cores.
# Run it from the repository root with nothing else on the machine:   bash benchmarks/remeasure.sh [OUT]
set -u
cd "$(dirname "$0")/.."
PY=${PY:-.venv/bin/python}
DATA=../shared/data
OUT=${1:-/tmp/imgclf-remeasure}
mkdir -p "$OUT/runs"
stamp() { echo "[$(date +%H:%M:%S)] $*" | tee -a "$OUT/progress.txt"; }
stamp "start $(git rev-parse --short HEAD)"
$PY -m imgclf env > "$OUT/env.txt" 2>&1
for s in 0 1 2; do
  stamp "fast recipe, 15 minutes, seed $s"
  $PY -m imgclf train --data $DATA/cifar10-jpg --recipe fast --time-budget 15 --seed $s --name fast15-s$s --out "$OUT/runs" > "$OUT/fast15-s$s.log" 2>&1
  $PY -m imgclf evaluate "$OUT/runs/fast15-s$s/best.pt" --split test --json > "$OUT/fast15-s$s.eval.json" 2> "$OUT/fast15-s$s.eval.err"
done
for p in fp32 auto; do
  stamp "fast recipe, 5 minutes, --precision $p"
  $PY -m imgclf train --data $DATA/cifar10-jpg --recipe fast --time-budget 5 --seed 0 --precision $p --name fast5-$p --out "$OUT/runs" > "$OUT/fast5-$p.log" 2>&1
  $PY -m imgclf evaluate "$OUT/runs/fast5-$p/best.pt" --split test --json > "$OUT/fast5-$p.eval.json" 2> "$OUT/fast5-$p.eval.err"
done
stamp "training throughput against the seed"
$PY benchmarks/train_throughput.py --rounds 3 --steps 20 > "$OUT/train_throughput.txt" 2>&1
stamp "export formats"
$PY -m imgclf train --data $DATA/hymenoptera --model resnet18 --epochs 1 --name r18-hym --out "$OUT/runs" > "$OUT/r18.log" 2>&1
$PY benchmarks/export_formats.py --weights "$OUT/runs/r18-hym/best.pt" --out "$OUT/export" > "$OUT/export.txt" 2>&1
stamp "serving under load"
$PY -m imgclf train --data $DATA/hymenoptera --model efficientnet_lite0 --pretrained --freeze backbone --epochs 10 --name serve-lite0 --out "$OUT/runs" > "$OUT/lite0.log" 2>&1
$PY -m imgclf export "$OUT/runs/serve-lite0/best.pt" --format onnx-int8 --out "$OUT/serve-lite0.int8.onnx" > "$OUT/serve-export.txt" 2>&1
$PY benchmarks/serve_load.py "$OUT/serve-lite0.int8.onnx" --requests 2000 > "$OUT/serve.txt" 2>&1
stamp "decoding: simplejpeg against Pillow; predict and serve against the ceiling"
$PY benchmarks/decode.py --accuracy "$OUT/serve-lite0.int8.onnx" > "$OUT/decode.txt" 2>&1
$PY benchmarks/ceiling.py "$OUT/serve-lite0.int8.onnx" > "$OUT/ceiling.txt" 2>&1
stamp "done: results in $OUT (*.eval.json, *.txt)"
