#!/usr/bin/env bash
# The prepared GPU check of the search: resnet_stage2, 4 trials at 0.25 GPU each, bf16 autocast, on a phantom
# set at 224 px (random-init weights: this measures time and throughput, not accuracy). Also runs the
# gpu-marked tests. Usage, on a machine with a GPU, from the repository root:
#   OUT=/tmp/gpu-check bash benchmarks/gpu_search_check.sh
# Ray and its few missing dependencies may come as wheels in .whl/ (installed into /tmp/site).
set -euo pipefail
OUT=${OUT:-/tmp/gpu-check}
mkdir -p "$OUT"
export PYTHONUNBUFFERED=1 PYTHONPATH="$PWD${PYTHONPATH:+:$PYTHONPATH}"
if compgen -G ".whl/*.whl" >/dev/null; then
  python3 -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --target /tmp/site .whl/*.whl
  export PYTHONPATH="$PYTHONPATH:/tmp/site"
fi
nvidia-smi --query-gpu=name,memory.total,driver_version --format=csv
python3 -c "import torch, ray, pytorch_lightning as pl; print('torch', torch.__version__, 'ray', ray.__version__, 'lightning', pl.__version__)"
python3 -m pytest -q -p no:cacheprovider -m gpu tests/test_train.py 2>&1 | tail -3
python3 -m modules.phantom /tmp/phantom-gpu --n-per-class 200 --size 256 >/dev/null
start=$(date +%s)
python3 -m tuning.search --space resnet_stage2 --data /tmp/phantom-gpu --weights none --num-samples 4 \
  --gpus-per-trial 0.25 --cpus-per-trial 3 --precision bf16-mixed --max-epochs 6 --grace-period 4 \
  --no-dashboard --out /tmp/gpu-run 2>&1 | grep -vE '│|╭|╰|├' | tail -25
echo "search_command_wall_s=$(( $(date +%s) - start ))"
python3 - /tmp/gpu-run/report.json <<'PY'
import json, sys
r = json.load(open(sys.argv[1]))
s = r["search"]
print({k: s[k] for k in ("wall_time_s", "trial_time_s_median", "trial_images_per_s_median", "trials_per_hour")},
      "refit_s", r["time_s"].get("refit"), "precision", r["config"]["precision"])
PY
cp /tmp/gpu-run/report.json /tmp/gpu-run/report.md /tmp/gpu-run/trials.csv /tmp/gpu-run/trial_curves.png "$OUT/"
