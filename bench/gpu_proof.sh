#!/usr/bin/env bash
# One device call for issues 11 and 12: install the carried wheels, then bench/gpu_proof.py (its
# docstring lists the phases and the files). Everything lands in $OUT: env.txt, cuda-tests.txt,
# monitor.json, compare-mlp.json, compare-gpt.json, demo_runs.tar.gz, summary.json, proof.log.
#
#     bash bench/fetch_gpu_wheels.sh                 # here, once: plotly + W&B into .whl/ (git-ignored)
#     OUT=/tmp/gpuproof bash bench/gpu_proof.sh      # here: the rehearsal (CUDA arms skipped or CPU-sized)
#     device run, carry [".whl"], timeout_s 540:     OUT=$OUT bash bench/gpu_proof.sh
#
# PROOF_BUDGET_S (default 450) bounds the phases; a hard stop at budget + 40 s keeps the call
# under 8 minutes even if a phase hangs past its own limit.
#
# REPORT=1 runs the speed report's CUDA section instead (bench/run.py on the GPU machine): the last
# bench/report.json is copied to $OUT first, so the report written there keeps its CPU sections
# (carried over, dated); copy $OUT/report.json and $OUT/REPORT.md back into bench/ afterwards.
#     device run, carry [".whl"], timeout_s 560:     REPORT=1 OUT=$OUT bash bench/gpu_proof.sh
set -uo pipefail
cd "$(dirname "$0")/.."
: "${OUT:?set OUT to the folder for the results}"
mkdir -p "$OUT"
PY=${PYTHON:-python3}
BUDGET=${PROOF_BUDGET_S:-450}
export WANDB_MODE=offline WANDB_SILENT=true WANDB_DISABLE_GIT=true PYTHONUNBUFFERED=1 PROOF_BUDGET_S=$BUDGET
export AMP_PROOF_WHEELS_LOG=/tmp/amp-proof-wheels.log
SITE=/tmp/amp-proof-site
if compgen -G ".whl/*.whl" >/dev/null; then
  if "$PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --upgrade --target "$SITE" .whl/*.whl >"$AMP_PROOF_WHEELS_LOG" 2>&1; then
    echo "installed $(ls .whl/*.whl | wc -l) carried wheels into $SITE: $(cd .whl && ls *.whl | tr '\n' ' ')" >>"$AMP_PROOF_WHEELS_LOG"
    export PYTHONPATH="$SITE${PYTHONPATH:+:$PYTHONPATH}"
  else
    echo "the carried wheels did not install (pip's message above); going on with what is installed" >>"$AMP_PROOF_WHEELS_LOG"
  fi
else
  echo "no carried wheels (.whl/ is empty or absent)" >"$AMP_PROOF_WHEELS_LOG"
fi
tail -1 "$AMP_PROOF_WHEELS_LOG"
if [ "${REPORT:-0}" = 1 ]; then
  [ -f bench/report.json ] && cp bench/report.json "$OUT/report.json"
  timeout -k 10 540 "$PY" bench/run.py --quick --out-dir "$OUT" 2>&1 | tee "$OUT/report.log"
  exit "${PIPESTATUS[0]}"
fi
timeout -k 10 $((BUDGET + 40)) "$PY" bench/gpu_proof.py --out "$OUT" --budget "$BUDGET" 2>&1 | tee "$OUT/proof.log"
