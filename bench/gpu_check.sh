#!/usr/bin/env bash
# On a machine with a GPU: run a small search on the GPU, check the GPU was used, print throughput.
#   bash bench/gpu_check.sh            (after `make install`, or with cmpnas installed)
# Fractional GPUs: two trials share the device (resources.gpus_per_trial=0.5), bf16 autocast on.
set -euo pipefail
cd "$(dirname "$0")/.."
BIN=${BIN:-.venv/bin}
work=$(mktemp -d)
python=$BIN/python
$python -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'; print('GPU:', torch.cuda.get_device_name(0))"
$python -c "import faiss; print('FAISS GPUs:', faiss.get_num_gpus() if hasattr(faiss, 'get_num_gpus') else 0)"
(cd "$work" && "$OLDPWD/$BIN/cmpnas" search --config "$OLDPWD/configs/quickstart.yaml" \
  --set search.num_candidates=4 --set search.max_concurrent=2 --set resources.gpus_per_trial=0.5 \
  --set resources.cpus_per_trial=2 --set training.mixed_precision=true --set training.channels_last=false \
  --set tracking.uri="sqlite:///$work/mlflow.db" --set output_dir="$work/out")
$python - "$work/mlflow.db" <<'PY'
import sys
from mlflow.tracking import MlflowClient
client = MlflowClient(tracking_uri=f"sqlite:///{sys.argv[1]}")
experiment = client.get_experiment_by_name("cmpnas-quickstart")
runs = [r for r in client.search_runs([experiment.experiment_id]) if r.data.tags.get("cmpnas.role") == "candidate"]
assert runs and all(r.data.params.get("device", "").startswith("cuda") for r in runs), "trials did not run on the GPU"
for r in runs:
    rates = [m.value for m in client.get_metric_history(r.info.run_id, "images_per_second")]
    print(f"{r.data.params['arch_id']}: {r.data.metrics['final_mflops']:.2f} MFLOPs, "
          f"train {max(rates):.0f} img/s, GPU memory {r.data.metrics.get('final_gpu_max_memory_mb', 0):.0f} MiB, "
          f"cross R@1 {r.data.metrics['final_cross_r1']:.2f}")
PY
