#!/usr/bin/env bash
# MLflow's UI on a finished search, opened as its users open it (docs/mlflow.md).
#   bash bench/ui_check.sh                          a tiny quickstart search (2 candidates) first, in a scratch folder
#   bash bench/ui_check.sh path/to/mlflow.db [NAME]  an existing sqlite store; NAME: the experiment (cmpnas-quickstart)
# Starts `mlflow ui` on a free port and checks, through the UI's own ajax-api, that the experiment
# is a model-training experiment, that the latest search's parent run and all its child runs are
# listed, and that the parent run has its three dataset inputs and the front as its description.
# Where Debian's `chromium` is installed it also loads the experiment page and the parent run page
# in a fresh headless browser (as a first-time user), checks what they show, and saves screenshots
# in SHOTS_DIR (default: the scratch folder, kept; SHOTS_DIR=docs/ui updates the docs' pictures).
# Exit status 1 when a check fails; no browser is not a failure (it says so).
set -euo pipefail
cd "$(dirname "$0")/.."
repo=$PWD
BIN=${BIN:-$repo/.venv/bin}
work=$(mktemp -d)
shots=${SHOTS_DIR:-$work/shots}
mkdir -p "$shots"
shots=$(realpath "$shots")

if [ $# -ge 1 ]; then
  db=$(realpath "$1")
  experiment=${2:-cmpnas-quickstart}
else
  db=$work/mlflow.db
  experiment=cmpnas-quickstart
  echo "== a tiny search in $work"
  (cd "$work" && "$BIN/cmpnas" search --config "$repo/configs/quickstart.yaml" \
    --set search.num_candidates=2 --set training.epochs=1 --set gallery.epochs=1 \
    --set data.train_size=2000 --set data.query_size=300 --set data.gallery_size=1200 \
    --set tracking.uri="sqlite:///$db" --set output_dir="$work/out" >"$work/search.log" 2>&1) \
    || { tail -30 "$work/search.log"; exit 1; }
fi

port=$("$BIN/python" -c "import socket; s = socket.socket(); s.bind(('127.0.0.1', 0)); print(s.getsockname()[1])")
url=http://127.0.0.1:$port
(cd "$work" && exec "$BIN/mlflow" ui --backend-store-uri "sqlite:///$db" --host 127.0.0.1 --port "$port") \
  >"$work/ui.log" 2>&1 &
ui_pid=$!
trap 'kill "$ui_pid" 2>/dev/null || true' EXIT
for _ in $(seq 120); do curl -sf "$url/health" >/dev/null && break; sleep 1; done
curl -sf "$url/health" >/dev/null || { echo "mlflow ui did not start:"; tail -20 "$work/ui.log"; exit 1; }
echo "== mlflow ui at $url (store $db)"

# The records, through the same ajax-api the UI's pages call.
"$BIN/python" - "$url" "$experiment" "$work/pages.env" <<'PY'
import json, sys, urllib.request
from orchestrator.tracking.tags import (DATASET_CONTEXT_TAG, DESCRIPTION_TAG, EXPERIMENT_KIND_TAG, EXPERIMENT_KIND_TRAINING,
                               PARENT_RUN_TAG, ROLE_SEARCH, ROLE_TAG)
from orchestrator.tracking.client import experiment_page_url, run_page_url
url, name, pages = sys.argv[1:]

def call(path, body=None):
    request = urllib.request.Request(f"{url}/ajax-api/2.0/mlflow/{path}", data=json.dumps(body).encode() if body else None,
                                     headers={"Content-Type": "application/json"})
    return json.load(urllib.request.urlopen(request, timeout=60))

failures = []
experiment = call(f"experiments/get-by-name?experiment_name={name}")["experiment"]
tags = {tag["key"]: tag["value"] for tag in experiment.get("tags", [])}
if tags.get(EXPERIMENT_KIND_TAG) != EXPERIMENT_KIND_TRAINING:
    failures.append(f"experiment kind {tags.get(EXPERIMENT_KIND_TAG)!r}, not {EXPERIMENT_KIND_TRAINING!r}")
runs = call("runs/search", {"experiment_ids": [experiment["experiment_id"]], "max_results": 1000,
                            "order_by": ["attributes.start_time DESC"]}).get("runs", [])
tags_of = lambda run: {tag["key"]: tag["value"] for tag in run["data"].get("tags", [])}
parents = [run for run in runs if tags_of(run).get(ROLE_TAG) == ROLE_SEARCH]
if not parents:
    sys.exit(f"FAIL: no search run in experiment {name}")
parent = parents[0]
parent_id = parent["info"]["run_id"]
children = [run for run in runs if tags_of(run).get(PARENT_RUN_TAG) == parent_id]
metrics = {metric["key"]: metric["value"] for metric in parent["data"].get("metrics", [])}
started = int(metrics.get("trials_started", len(children)))
print(f"experiment {experiment['experiment_id']} ({name}): kind {tags.get(EXPERIMENT_KIND_TAG)}; "
      f"parent run {parent['info']['run_name']} ({parent_id}, {parent['info']['status']}) with {len(children)} "
      f"child runs ({started} trials started)")
if not children or len(children) != started:
    failures.append(f"{len(children)} child runs listed under the parent, {started} trials started")
full = call(f"runs/get?run_id={parent_id}")["run"]
contexts = sorted({tag["key"]: tag["value"] for tag in item.get("tags", [])}.get(DATASET_CONTEXT_TAG, "?")
                  for item in full.get("inputs", {}).get("dataset_inputs", []))
print(f"parent run dataset inputs: {contexts}")
if contexts != ["gallery", "query", "train"]:
    failures.append(f"dataset inputs {contexts}, not gallery, query and train")
note = tags_of(full).get(DESCRIPTION_TAG, "")
print(f"parent run description: {len(note)} characters, first line {note.splitlines()[0] if note else None!r}")
if "Pareto front" not in note:
    failures.append("the parent run has no front in its description")
with open(pages, "w") as handle:
    handle.write(f"experiment_page='{experiment_page_url(url, experiment['experiment_id'])}'\n"
                 f"parent_page='{run_page_url(url, experiment['experiment_id'], parent_id)}'\n"
                 f"parent_name='{parent['info']['run_name']}'\nchildren={len(children)}\n")
if failures:
    sys.exit("FAIL: " + "; ".join(failures))
print("records: OK")
PY
# shellcheck disable=SC1091
source "$work/pages.env"

browser=$(command -v chromium || command -v chromium-browser || true)
if [ -z "$browser" ]; then
  echo "no chromium here (Debian: apt-get install chromium): pages not loaded, no screenshots"
  exit 0
fi
# A fresh profile each time: a first-time user, with no layout remembered from an earlier visit.
page() {  # page NAME URL HEIGHT: the page's text in $work/NAME.txt and a screenshot in $shots/NAME.png
  local profile
  profile=$(mktemp -d)
  "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$profile" \
    --window-size=1400,"$3" --virtual-time-budget=20000 --dump-dom "$2" 2>/dev/null \
    | sed -e 's/<[^>]*>//g' >"$work/$1.txt"
  rm -rf "$profile"; profile=$(mktemp -d)
  "$browser" --headless --no-sandbox --disable-gpu --hide-scrollbars --user-data-dir="$profile" \
    --window-size=1400,"$3" --virtual-time-budget=20000 --screenshot="$shots/$1.png" "$2" >/dev/null 2>&1
  rm -rf "$profile"
}
page experiment "$experiment_page" 900
page parent_run "$parent_page" 1500
failed=0
grep -q "$parent_name" "$work/experiment.txt" || { echo "FAIL: the experiment page does not list $parent_name"; failed=1; }
grep -q "$((children + 1)) matching runs" "$work/experiment.txt" \
  || { echo "FAIL: the experiment page does not count $((children + 1)) runs (the parent and its children)"; failed=1; }
if grep -q "Detect Issues" "$work/experiment.txt"; then echo "FAIL: the experiment page opened on GenAI"; failed=1; fi
grep -q "Pareto front" "$work/parent_run.txt" || { echo "FAIL: the parent run page shows no front"; failed=1; }
grep -q -- "-train" "$work/parent_run.txt" || { echo "FAIL: the parent run page lists no dataset"; failed=1; }
echo "pages: experiment ($experiment_page), parent run ($parent_page); screenshots in $shots"
ls -l "$shots"
[ "$failed" = 0 ] && echo "pages: OK"
exit "$failed"
