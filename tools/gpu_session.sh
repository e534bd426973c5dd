#!/usr/bin/env bash
# Every GPU check in one call of a few minutes on a GPU machine (docs/environment.md, "The GPU machine").
#
# Before: put wheels for Python 3.12 of the packages that machine lacks (ESPnet, jiwer, soundfile,
# espeakng-loader and their dependencies) in .whl/, and bring .whl/ with the working tree.
# Then, on the GPU machine with OUT set to a results folder:  bash tools/gpu_session.sh
#
# It installs the carried wheels, then runs the parts of tools/gpu_benchmarks.sh one after another,
# each under its own time limit (PART_LIMIT seconds, default 150), most important first: speed
# (issue goals: 6-of-12 student >= 1.7x at batch 16, attention-reuse saving), analysis (25 x 768 x
# 1M frames all-pairs in < 30 s), train (kd loop vs ESPnet-default loop), tests (pytest -m gpu).
# After each part it packs the tables written so far and every log into $OUT/gpu_results.tgz, so a
# call cut off at its limit still brings back what finished. PARTS="speed analysis" runs a subset.
#
# Off the device (no $OUT), RESULTS=DIR names where the archive goes; SMOKE=1 runs the parts at toy
# sizes on the CPU (tests/tools/test_gpu_benchmarks.py does so).
set -uo pipefail
cd "$(dirname "$0")/.."
RESULTS="${RESULTS:-${OUT:?set OUT (the device tool does) or RESULTS}}"
PARTS="${PARTS:-speed analysis train tests}"
PART_LIMIT="${PART_LIMIT:-150}"
WORK="${WORK:-exp/gpu_bench}"
LOGS="$WORK/logs"
mkdir -p "$RESULTS" "$LOGS"
export WORK

if [ -d .whl ] && ls .whl/*.whl > /dev/null 2>&1; then
    python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target /tmp/site .whl/*.whl \
        > "$LOGS/wheels.log" 2>&1 || { echo "wheel install failed: see $LOGS/wheels.log"; tail -20 "$LOGS/wheels.log"; exit 1; }
    export PYTHONPATH="/tmp/site:$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
if [ ! -x .venv/bin/python ]; then  # the device machine: its python3 holds torch; the package runs from the tree
    export PY="${PY:-python3}" KD="${KD:-python3 -m kd.cli}"
    export PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
fi
export PYTHONUNBUFFERED=1
{ date -u; command -v nvidia-smi > /dev/null && nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv; \
  "${PY:-.venv/bin/python}" -c 'import torch; print("torch", torch.__version__, "cuda", torch.cuda.is_available())'; } \
    > "$LOGS/machine.txt" 2>&1

pack() {  # the tables written so far and all logs, in one file (the device tool brings back at most 8)
    local tables=()
    for f in docs/bench/*_gpu.json docs/bench/*_gpu.md "$WORK"/smoke/*_gpu.json "$WORK"/smoke/*_gpu.md; do
        [ -f "$f" ] && tables+=("$f")
    done
    tar czf "$RESULTS/gpu_results.tgz" "${tables[@]}" "$LOGS" 2> /dev/null
}

status=0
for part in $PARTS; do
    start=$(date +%s)
    timeout --kill-after=10 "$PART_LIMIT" bash tools/gpu_benchmarks.sh "$part" > "$LOGS/$part.log" 2>&1
    rc=$?
    line="$part: exit $rc after $(( $(date +%s) - start )) s$([ $rc = 124 ] && echo " (stopped at PART_LIMIT=$PART_LIMIT s)")"
    echo "$line" | tee -a "$LOGS/parts.txt"
    [ $rc = 0 ] || { status=1; tail -15 "$LOGS/$part.log"; }
    pack
done
cat "$LOGS/machine.txt"
exit $status
