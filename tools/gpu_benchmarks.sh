#!/usr/bin/env bash
# The GPU figures of the benchmarks, in three parts that each fit in 10 minutes on one H100.
# Run from anywhere, after tools/install.sh; results go to docs/bench/*_gpu.{json,md}.
#
#   bash tools/gpu_benchmarks.sh analysis  # kd bench analysis --gpu-scale (25 x 768 x 1M frames and 250k)
#                                          # and kd bench analyze on a wav2vec 2.0 base (random weights)
#   bash tools/gpu_benchmarks.sh speed     # wav2vec 2.0 base vs a 6-of-12 student and an attention-reuse
#                                          # student (pairs of layers), batch 1 and 16
#   bash tools/gpu_benchmarks.sh train     # kd bench train: base student, teacher online and cached
#   bash tools/gpu_benchmarks.sh tests     # pytest -m gpu (mixed precision runs, CUDA analysis = CPU, bench on CUDA)
#   bash tools/gpu_benchmarks.sh all       # the three benchmark parts
#
# SMOKE=1 runs every part at toy sizes on the CPU, writing under $WORK/smoke instead of docs/bench
# (tests/tools/test_gpu_benchmarks.py runs it so, marked slow: pytest -m slow tests/tools/test_gpu_benchmarks.py).
set -euo pipefail
cd "$(dirname "$0")/.."
# KD may be a command with arguments ("python3 -m kd.cli" where there is no .venv)
read -ra KD <<< "${KD:-.venv/bin/kd}"
PY="${PY:-.venv/bin/python}"
WORK="${WORK:-exp/gpu_bench}"
SMOKE="${SMOKE:-0}"
if [ "$SMOKE" = 1 ]; then
    DOCS="$WORK/smoke"; DEVICE=cpu; PRESET=tests; ANALYZE_DATA=us/train
else
    DOCS=docs/bench; DEVICE=cuda; PRESET=cpu; ANALYZE_DATA=target/test
fi
mkdir -p "$DOCS" "$WORK"
CORPUS="$WORK/corpus-$PRESET"

corpus() {
    [ -f "$CORPUS/corpus.json" ] || "${KD[@]}" corpus synth --preset "$PRESET" --out "$CORPUS" --quiet
}

# a wav2vec 2.0 base with random weights (timing only), or a tiny one in smoke mode
base_model() {
    "$PY" - "$WORK/w2v2-base" "$SMOKE" <<'EOF'
import sys

from kd.bench.analyze import random_base_checkpoint

toy = dict(hidden_size=32, num_attention_heads=2, intermediate_size=64, conv_dim=[16] * 7,
           num_conv_pos_embeddings=16, num_conv_pos_embedding_groups=4)
random_base_checkpoint(sys.argv[1], **(toy if sys.argv[2] == "1" else {}))
EOF
}

part_analysis() {
    corpus
    base_model
    if [ "$SMOKE" = 1 ]; then
        scale=(--scale-layers 3 --scale-dim 16 --scale-frames 4000 --scale-device cpu)
    else
        scale=()
    fi
    "${KD[@]}" bench analysis --no-similarity --gpu-scale "${scale[@]}" \
        --out "$DOCS/analysis_gpu.json" --table "$DOCS/analysis_gpu.md"
    "${KD[@]}" bench analyze "$WORK/w2v2-base" --data "$CORPUS/$ANALYZE_DATA" --device "$DEVICE" \
        --work "$WORK/analyze" --out "$DOCS/analyze_gpu.json" --table "$DOCS/analyze_gpu.md"
}

part_speed() {
    base_model
    "$PY" - "$WORK" <<'EOF'
import sys
from pathlib import Path

from kd.plan import CompressionPlan

work = Path(sys.argv[1])
CompressionPlan(keep_layers=(0, 2, 4, 6, 8, 11)).save(work / "plan-6of12.json")  # every other layer + the last
CompressionPlan(keep_layers=tuple(range(12)),
                attention_reuse=tuple((i, i + 1) for i in range(0, 12, 2))).save(work / "plan-reuse.json")
EOF
    "${KD[@]}" compress "$WORK/w2v2-base" "$WORK/plan-6of12.json" --out "$WORK/student-6of12"
    "${KD[@]}" compress "$WORK/w2v2-base" "$WORK/plan-reuse.json" --out "$WORK/student-reuse"
    if [ "$SMOKE" = 1 ]; then
        speed=(--seconds 1 --repeats 2 --warmup 1)
    else
        speed=(--repeats 20)
    fi
    "${KD[@]}" bench speed "$WORK/w2v2-base" "$WORK/student-6of12" "$WORK/student-reuse" --device "$DEVICE" \
        --batch-sizes 1 16 "${speed[@]}" --out "$DOCS/speed_gpu.json" --table "$DOCS/speed_gpu.md"
}

part_train() {
    corpus
    local teacher="$WORK/teacher" steps=40 max_seconds=200 preset=base window=10
    if [ "$SMOKE" = 1 ]; then
        steps=2; max_seconds=6; preset=tiny; window=2
    fi
    cat > "$WORK/teacher.yaml" <<EOF
data: {train: [$CORPUS/us/train, $CORPUS/target/train], max_seconds: $max_seconds}  # its characters cover target
model: {preset: $([ "$SMOKE" = 1 ] && echo tiny || echo teacher)}
optim: {max_steps: $steps, mixed_precision: $([ "$SMOKE" = 1 ] && echo 'no' || echo bf16)}
checkpoint: {at_epoch_end: false}
logging: {progress: false, tensorboard: false}
EOF
    "${KD[@]}" train "$WORK/teacher.yaml" "$teacher"
    "${KD[@]}" bench train --data "$CORPUS/target/train" --teacher "$teacher" --preset "$preset" \
        --window "$window" --windows 3 --max-seconds "$max_seconds" --out "$WORK/bench_train" \
        --table "$DOCS/train_gpu.md"
    cp "$WORK/bench_train/train.json" "$DOCS/train_gpu.json"
}

case "${1:-}" in
    tests) "$PY" -m pytest -q -m gpu tests ;;
    analysis) part_analysis ;;
    speed) part_speed ;;
    train) part_train ;;
    all) part_analysis; part_speed; part_train ;;
    *) echo "usage: $0 {tests|analysis|speed|train|all}" >&2; exit 2 ;;
esac
