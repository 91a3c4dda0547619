#!/usr/bin/env bash
# The lent GPU machine's one prepared script (issue 31; docs/deploy.md, "GPU machine"). One device
# call carries 64 MiB with the working tree, so the wheels of bench/gpu/build_carry.py come in parts,
# one a call, on the same warm machine (it stays warm 30 s after a call: make the calls back to back):
#
#   bash bench/gpu/run_gpu.sh install part1    call 1, carry ["bench/gpu/carry/part1"], timeout_s 120
#   bash bench/gpu/run_gpu.sh install part2    call 2, carry ["bench/gpu/carry/part2"], timeout_s 120
#   bash bench/gpu/run_gpu.sh run part3        call 3, carry ["bench/gpu/carry/part3"], timeout_s 360
#   bash bench/gpu/run_gpu.sh run              a rerun on the same warm machine: nothing carried
#
# install PART...: checks each part's SHA256SUMS and installs its wheels (pip --no-index --no-deps)
#   into $GPU_HOME/site/PART, its Fashion-MNIST files into $GPU_HOME/fashion-mnist; they stay there
#   while the machine is warm. Every call also writes the image's package versions to $OUT.
# run [PART...]: installs the parts it names, refuses if a part of the carry is missing (the machine
#   went back between calls: start again at call 1), then, all within RUN_SECONDS of its start:
#   an MLflow server (sqlite store, served artifacts) and a Ray head with token authentication
#   (RAY_AUTH_MODE=token), which the searches join; the quickstart search with
#   resources.gpus_per_trial 0.25 and 4 trials at once; a larger search (full Fashion-MNIST, a resnet18
#   paragon trained on the GPU, 16 candidates) whose candidate epochs are sized from the quickstart's
#   trials to the time left; `cmpnas export` of its front and `cmpnas gallery embed` on Ray; nvidia-smi
#   sampled every 0.5 s throughout. $OUT gets summary.json, run.log, nvidia-smi.csv,
#   image-packages.txt, pip-check.txt and logs.tar.gz (every log, both searches' reports and fronts).
#
# Settings (environment): RUN_SECONDS (300: with the three calls' start and transfers, room for one
# rerun in a 15-minute slot), GPU_HOME (/root/cmpnas-gpu), PYTHON (python3: the image's, with torch),
# CONCURRENT (4) and GPUS_PER_TRIAL (0.25) of the quickstart, CPUS_PER_TRIAL (2), QUICK_MAX (180: the
# quickstart's own limit, seconds), QUICK (1; 0 skips the quickstart, for a rerun that gives all its
# time to the larger search), LARGE_CANDIDATES (16), LARGE_CONCURRENT (8) and LARGE_GPUS_PER_TRIAL
# (0.125: trials cost mostly fixed overheads on a GPU, so more at once finish sooner), LARGE_EPOCHS
# (unset: sized from the quickstart, else 2), GALLERY_EPOCHS (4: the resnet18 paragon's).
# DRY_RUN=1 tries the script here, on the CPU: the parts install with a local Python 3.12
# (INSTALL_PYTHON), the searches run tiny with the project's venv (PYTHON), GPU readings are skipped.
set -uo pipefail
REPO=$(cd "$(dirname "$0")/../.." && pwd)
CARRY=$REPO/bench/gpu/carry
GPU_HOME=${GPU_HOME:-/root/cmpnas-gpu}
PY=${PYTHON:-python3}
INSTALL_PY=${INSTALL_PYTHON:-$PY}
DRY_RUN=${DRY_RUN:-0}
OUT=${OUT:-$(mktemp -d)}
RUN_SECONDS=${RUN_SECONDS:-300}
CONCURRENT=${CONCURRENT:-4}
GPUS_PER_TRIAL=${GPUS_PER_TRIAL:-0.25}
CPUS_PER_TRIAL=${CPUS_PER_TRIAL:-2}
LARGE_CANDIDATES=${LARGE_CANDIDATES:-16}
LARGE_CONCURRENT=${LARGE_CONCURRENT:-8}
LARGE_GPUS_PER_TRIAL=${LARGE_GPUS_PER_TRIAL:-0.125}
LARGE_EPOCHS=${LARGE_EPOCHS:-}
QUICK=${QUICK:-1}
GALLERY_EPOCHS=${GALLERY_EPOCHS:-4}
QUICK_MAX=${QUICK_MAX:-180}
STARTED=$(date +%s)
mkdir -p "$GPU_HOME/site" "$OUT"

say() { echo "[$(( $(date +%s) - STARTED ))s] $*"; }

install_part() {  # PART: check, install into $GPU_HOME/site/PART (once per warm machine)
  local part=$1 folder=$CARRY/$1 site=$GPU_HOME/site/$1
  [ -f "$folder/SHA256SUMS" ] || { say "$part: not carried (carry bench/gpu/carry/$part)"; return 1; }
  local stamp; stamp=$(sha256sum "$folder/SHA256SUMS" | cut -c1-64)
  if [ "$(cat "$site/.carry-sha256" 2>/dev/null)" = "$stamp" ]; then say "$part: already installed"; return 0; fi
  (cd "$folder" && sha256sum -c --quiet SHA256SUMS) || { say "$part: damaged in transfer"; return 1; }
  rm -rf "$site"; mkdir -p "$site"
  if compgen -G "$folder/*.whl" >/dev/null; then
    "$INSTALL_PY" -m pip install -q --no-index --no-deps --no-compile --no-cache-dir --disable-pip-version-check --root-user-action=ignore \
      --target "$site" "$folder"/*.whl || { say "$part: pip install failed"; return 1; }
  fi
  if [ -d "$folder/fashion-mnist" ]; then mkdir -p "$GPU_HOME/fashion-mnist" && cp "$folder"/fashion-mnist/* "$GPU_HOME/fashion-mnist/"; fi
  cp "$folder/PART" "$site/PART" && echo "$stamp" > "$site/.carry-sha256"
  say "$part: installed ($(du -sh "$site" | cut -f1)$( [ -d "$folder/fashion-mnist" ] && echo ', and the data set'))"
}

missing_parts() {  # the parts of the carry not installed here yet
  local total; total=$(cut -d/ -f2 "$GPU_HOME"/site/part*/PART 2>/dev/null | sort -u)
  [ "$(echo "$total" | wc -w)" = 1 ] || { echo "(no part, or parts of two carries)"; return; }
  for k in $(seq 1 "$total"); do [ -f "$GPU_HOME/site/part$k/.carry-sha256" ] || echo -n "part$k "; done
}

image_versions() {  # what the image has, for constraints-gpu.txt
  "$PY" -m pip list --format=freeze --disable-pip-version-check > "$OUT/image-packages.txt" 2>&1
  { "$PY" -V; if command -v nvidia-smi >/dev/null; then nvidia-smi -L | head -3; else echo "no nvidia-smi"; fi; } 2>&1 | sed 's/^/image: /'
}

use_carry() {  # the installed parts, and the checkout's own code first
  local sites
  sites=$(find "$GPU_HOME/site" -mindepth 1 -maxdepth 1 -type d | sort | tr '\n' ':')
  if [ "$DRY_RUN" = 1 ]; then export PYTHONPATH=$REPO; else export PYTHONPATH=$REPO:${sites%:}; fi
  export PYTHONUNBUFFERED=1 RAY_USAGE_STATS_ENABLED=0
  unset MLFLOW_TRACKING_URI RAY_ADDRESS
}

script_path() {  # a console script of the carry (or, dry run, of the venv): run with $PY, not its shebang
  local found; found=$(ls "$GPU_HOME"/site/*/bin/"$1" 2>/dev/null | head -1)
  [ "$DRY_RUN" = 1 ] || [ -z "$found" ] && found=$(dirname "$(command -v "$PY")")/$1
  echo "$found"
}

CMPNAS=("$PY" -c 'import sys; from orchestrator.cli import main; sys.argv[0] = "cmpnas"; main()')

left() { echo $(( STARTED + RUN_SECONDS - $(date +%s) )); }

phase() {  # NAME LIMIT_S COMMAND...: timed, logged to $WORK/logs/NAME.log, its span in phases.csv
  local name=$1 limit=$2 rc=0 t0 t1; shift 2
  if [ "$limit" -lt 5 ]; then say "$name: skipped, ${limit}s left"; echo "$name,skipped" >> "$WORK/rc.csv"; return 1; fi
  t0=$(date +%s.%N)
  timeout --kill-after=15 "$limit" "$@" > "$WORK/logs/$name.log" 2>&1 || rc=$?
  t1=$(date +%s.%N)
  echo "$name,$t0,$t1" >> "$WORK/phases.csv"; echo "$name,$rc" >> "$WORK/rc.csv"
  say "$name: rc $rc in $(awk "BEGIN{printf \"%.1f\", $t1 - $t0}") s (limit ${limit}s)"
  [ "$rc" = 0 ] || tail -n 25 "$WORK/logs/$name.log" | sed "s/^/  $name| /"
  return "$rc"
}

start_services() {  # MLflow server and a Ray head with token authentication, both in the background
  MLFLOW_PORT=5055 RAY_PORT=6390
  MLFLOW=http://127.0.0.1:$MLFLOW_PORT
  # What a killed earlier run left: its server (its own session) and its Ray, on the same ports.
  [ -f "$GPU_HOME/mlflow.pid" ] && kill -- "-$(cat "$GPU_HOME/mlflow.pid")" 2>/dev/null
  if (exec 3<>/dev/tcp/127.0.0.1/$RAY_PORT) 2>/dev/null; then timeout 60 "$PY" "$(script_path ray)" stop --force > /dev/null 2>&1; fi
  setsid "$PY" "$(script_path mlflow)" server --host 127.0.0.1 --port $MLFLOW_PORT --workers 1 \
    --backend-store-uri "sqlite:///$WORK/mlflow.db" --artifacts-destination "$WORK/mlartifacts" --serve-artifacts \
    > "$WORK/logs/mlflow-server.log" 2>&1 &
  MLFLOW_PID=$!; echo "$MLFLOW_PID" > "$GPU_HOME/mlflow.pid"
  export RAY_AUTH_MODE=token RAY_AUTH_TOKEN
  RAY_AUTH_TOKEN=$("$PY" -c 'import secrets; print(secrets.token_hex(32))')
  local gpus=0; [ "$DRY_RUN" = 1 ] || gpus=$(nvidia-smi -L 2>/dev/null | grep -c '^GPU')
  phase ray-start 60 "$PY" "$(script_path ray)" start --head --port=$RAY_PORT --num-gpus="$gpus" \
    --num-cpus="$(nproc)" --include-dashboard=false --disable-usage-stats --temp-dir=/tmp/rt-gpu \
    --node-ip-address=127.0.0.1 || return 1
  RAY_ADDRESS_ARG=127.0.0.1:$RAY_PORT
  phase mlflow-up 90 "$PY" -c "
import time, urllib.request
for _ in range(360):
    try:
        urllib.request.urlopen('$MLFLOW/health', timeout=2); break
    except OSError:
        time.sleep(0.25)
else:
    raise SystemExit('mlflow server not healthy')"
}

stop_services() {
  [ -n "${SAMPLER_PID:-}" ] && kill "$SAMPLER_PID" 2>/dev/null
  [ -n "${RAY_ADDRESS_ARG:-}" ] && timeout 60 "$PY" "$(script_path ray)" stop --force > "$WORK/logs/ray-stop.log" 2>&1
  [ -n "${MLFLOW_PID:-}" ] && kill -- "-$MLFLOW_PID" 2>/dev/null
  cp -r /tmp/rt-gpu/session_latest/logs "$WORK/logs/ray" 2>/dev/null
  find "$WORK/logs/ray" -type f -size +2M -exec truncate -s 2M {} + 2>/dev/null
}

common_sets() {  # EXPERIMENT GPUS_PER_TRIAL CONCURRENT: the settings both searches share
  echo --set tracking.uri="$MLFLOW" --set tracking.experiment="$1" --set data.root="$DATA" \
    --set ray.address="$RAY_ADDRESS_ARG" --set resources.gpus_per_trial="$2" \
    --set resources.cpus_per_trial="$CPUS_PER_TRIAL" --set search.max_concurrent="$3" --set training.channels_last=false
}

large_sets() {  # EPOCHS: the larger search (full Fashion-MNIST, resnet18 paragon, 16 candidates)
  local sizes="--set data.train_size=60000 --set data.validation_size=5000"
  [ "$DRY_RUN" = 1 ] && sizes="--set data.train_size=900 --set data.validation_size=300 --set data.query_size=200
    --set data.gallery_size=400 --set training.min_steps=0"
  echo $sizes --set gallery.backbone=resnet18 --set gallery.epochs="$GALLERY_EPOCHS" --set gallery.batch_size=256 \
    --set search.num_candidates="$LARGE_CANDIDATES" --set training.epochs="$1" --set output_dir="$WORK/large"
}

quickstart() {
  local quick=""
  [ "$DRY_RUN" = 1 ] && quick="--set data.train_size=600 --set data.validation_size=200 --set data.query_size=200
    --set data.gallery_size=400 --set gallery.epochs=1 --set training.epochs=1 --set training.min_steps=0 --set search.num_candidates=2"
  # shellcheck disable=SC2046,SC2086
  phase quickstart "$(( $(left) - 120 < QUICK_MAX ? $(left) - 120 : QUICK_MAX ))" "${CMPNAS[@]}" search \
    $(common_sets gpu-quickstart "$GPUS_PER_TRIAL" "$CONCURRENT") --set output_dir="$WORK/quickstart" $quick
  "$PY" bench/gpu/search_report.py --tracking-uri "$MLFLOW" --experiment gpu-quickstart --out "$WORK/quickstart.json"
}

large_epochs() {  # LARGE_EPOCHS, else the most that the quickstart's trials predict to fit, at least 1
  local fit=$(( $(left) - 90 - 40 - 20 )) train_large=55000 epochs  # export and embed; the paragon; the start
  [ "$DRY_RUN" = 1 ] && train_large=600
  if [ -n "$LARGE_EPOCHS" ]; then echo "$LARGE_EPOCHS"; return; fi
  [ -s "$WORK/quickstart.json" ] || { echo 2; return; }
  epochs=$("$PY" bench/gpu/search_report.py --tracking-uri "$MLFLOW" --experiment gpu-quickstart \
    --fit-seconds "$fit" --measured-train-images "$([ "$DRY_RUN" = 1 ] && echo 400 || echo 10000)" \
    --train-images "$train_large" --candidates "$LARGE_CANDIDATES" --concurrent "$LARGE_CONCURRENT")
  say "larger search: ${epochs:-?} epochs per candidate predicted to fit ${fit}s (0: not even one; 1 runs," \
    "cut by its time limit if need be)" >&2
  echo $(( ${epochs:-0} >= 1 ? epochs : 1 ))
}

searches() {
  [ "$QUICK" = 0 ] || quickstart
  EPOCHS=$(large_epochs)
  # shellcheck disable=SC2046
  phase large "$(( $(left) - 90 ))" "${CMPNAS[@]}" search $(common_sets gpu-large "$LARGE_GPUS_PER_TRIAL" \
    "$LARGE_CONCURRENT") $(large_sets "$EPOCHS")
  "$PY" bench/gpu/search_report.py --tracking-uri "$MLFLOW" --experiment gpu-large --out "$WORK/large.json"
}

export_and_embed() {  # from the larger search if it finished, else the quickstart
  local experiment=gpu-large folder=$WORK/large gallery_sets
  # shellcheck disable=SC2046
  gallery_sets="$(large_sets 1)"
  if ! grep -q '^large,0$' "$WORK/rc.csv"; then experiment=gpu-quickstart folder=$WORK/quickstart gallery_sets=""; fi
  phase export "$(( $(left) - 45 < 120 ? $(left) - 45 : 120 ))" "${CMPNAS[@]}" export --experiment "$experiment" \
    --tracking-uri "$MLFLOW" --output "$WORK/export" --set data.root="$DATA"
  # shellcheck disable=SC2046,SC2086
  phase embed "$(( $(left) - 10 < 90 ? $(left) - 10 : 90 ))" "${CMPNAS[@]}" gallery embed --output "$WORK/embedded" \
    --address "$RAY_ADDRESS_ARG" --set data.root="$DATA" $gallery_sets --set gallery.checkpoint="$folder/gallery.safetensors"
}

summarise() {  # summary.json, and everything else in logs.tar.gz: at most 8 files come back from $OUT
  [ -s "$WORK/nvidia-smi.csv" ] && "$PY" bench/gpu/gpu_samples.py "$WORK/nvidia-smi.csv" "$WORK/phases.csv" \
    --out "$WORK/gpu-phases.json" > /dev/null
  "$PY" - "$WORK" "$OUT/summary.json" "$RUN_SECONDS" "${EPOCHS:-}" <<'PY'
import json, platform, sys, time
from pathlib import Path
work, out, run_seconds, epochs = Path(sys.argv[1]), sys.argv[2], int(sys.argv[3]), sys.argv[4]
read = lambda name: json.loads((work / name).read_text()) if (work / name).exists() else None
summary = {"date": time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime()), "python": platform.python_version(),
           "run_seconds_limit": run_seconds, "large_candidate_epochs": epochs or None,
           "env": read("env.json"), "exit_codes": dict(line.split(",") for line in (work / "rc.csv").read_text().split()),
           "phase_seconds": {n: round(float(b) - float(a), 1) for n, a, b in
                             (line.split(",") for line in (work / "phases.csv").read_text().split())},
           "gpu_by_phase": read("gpu-phases.json"), "quickstart": read("quickstart.json"), "large": read("large.json")}
Path(out).write_text(json.dumps(summary, indent=1) + "\n")
PY
  cp "$WORK/nvidia-smi.csv" "$OUT/" 2>/dev/null
  find "$WORK" \( -name '*.safetensors' -o -name '*.onnx' -o -name '*.pt' -o -name '*.npy' -o -name '*.faiss' \
    -o -name 'checkpoint_*' -o -name 'mlartifacts' \) -prune -o -type f -print 2>/dev/null \
    | sed "s|^$WORK/||" | tar -czf "$OUT/logs.tar.gz" -C "$WORK" -T - 2>/dev/null
  if [ "$(stat -c %s "$OUT/logs.tar.gz")" -gt $((15 * 1024 * 1024)) ]; then  # a file over 16 MiB stays there
    find "$WORK" \( -name '*.safetensors' -o -name '*.onnx' -o -name '*.pt' -o -name '*.npy' -o -name '*.faiss' \
      -o -name 'checkpoint_*' -o -name 'mlartifacts' -o -name ray -o -name mlflow.db \) -prune -o -type f -print \
      | sed "s|^$WORK/||" | tar -czf "$OUT/logs.tar.gz" -C "$WORK" -T - 2>/dev/null
  fi
  say "results: $(ls "$OUT" | tr '\n' ' ')($(du -sh "$OUT" | cut -f1))"
}

run() {
  local missing; missing=$(missing_parts)
  [ -z "$missing" ] || { say "refused: not installed here: $missing(carry it; if an earlier part is missing too," \
    "the machine went back between calls: start again at call 1)"; return 1; }
  WORK=$GPU_HOME/run-$(date +%H%M%S); mkdir -p "$WORK/logs"; : > "$WORK/phases.csv"; : > "$WORK/rc.csv"
  DATA=$GPU_HOME/fashion-mnist
  [ -f /usr/share/datasets/fashion-mnist/train-images-idx3-ubyte.gz ] && [ ! -f "$DATA/train-images-idx3-ubyte.gz" ] \
    && DATA=/usr/share/datasets/fashion-mnist
  use_carry
  trap 'stop_services; summarise' EXIT
  if [ "$DRY_RUN" != 1 ]; then
    nvidia-smi --query-gpu=timestamp,utilization.gpu,memory.used,memory.total --format=csv,noheader,nounits -lms 500 \
      > "$WORK/nvidia-smi.csv" 2>/dev/null &
    SAMPLER_PID=$!
  fi
  phase imports 60 "$PY" -c "
import json, platform, ray, mlflow, optuna, faiss, fvcore, sqlalchemy, pydantic, torch, timm, orchestrator
gpu = torch.cuda.get_device_name(0) if torch.cuda.is_available() else 'none'
env = {'gpu': gpu, 'torch': torch.__version__, 'timm': timm.__version__, 'ray': ray.__version__, 'mlflow': mlflow.__version__,
       'optuna': optuna.__version__, 'faiss': faiss.__version__, 'python': platform.python_version(), 'cmpnas_from': orchestrator.__file__}
open('$WORK/env.json', 'w').write(json.dumps(env)); print(env)" || return 1
  [ "$DRY_RUN" = 1 ] || "$PY" -c "import torch; assert torch.cuda.is_available(), 'no CUDA device'" || return 1
  start_services || return 1
  searches
  export_and_embed
}

mode=${1:-}; shift || true
case "$mode" in
  install|run) ;;
  *) echo "usage: bash bench/gpu/run_gpu.sh install PART... | run [PART...]" >&2; exit 2 ;;
esac
say "$mode on ${HOSTNAME:-?}, RUN_SECONDS=$RUN_SECONDS, GPU_HOME=$GPU_HOME"
status=0
for part in "$@"; do install_part "$part" || status=1; done
image_versions
if [ "$mode" = install ]; then
  say "still to install: $(missing_parts)"; exit $status
fi
[ "$status" = 0 ] || exit 1
(use_carry; "$PY" -m pip check --disable-pip-version-check > "$OUT/pip-check.txt" 2>&1)
run 2>&1 | tee "$OUT/run.log"
