#!/usr/bin/env bash
# Set up (idempotent) and run the main job on this machine: the dcwatch agent and the analyzer
# in its embedded default (it scrapes the agent itself into SQLite; no Prometheus needed), plus a
# local Alertmanager when one is installed. Ctrl-C stops everything.
#   agent     http://127.0.0.1:9478/         (/metrics, /healthz)
#   analyzer  http://127.0.0.1:9479/         (overview page: nodes, scores, alerts, forecasts)
#   alerts    http://127.0.0.1:9093/#/alerts (Alertmanager) and var/alerts.jsonl
# bash scripts/run.sh --demo: a simulated fleet instead (no GPU needed), same analyzer URL.
set -euo pipefail
cd "$(dirname "$0")/.."
bash scripts/setup.sh
mkdir -p var
# --demo: a simulated GPU fleet (real agents, simulated NVML, faults) instead of this machine.
if [ "${1:-}" = "--demo" ]; then
  shift
  exec .venv/bin/dcwatch demo --listen 127.0.0.1:9479 --dir var/demo "$@"
fi
pids=()
cleanup() { kill "${pids[@]}" 2>/dev/null || true; wait 2>/dev/null || true; }
trap cleanup EXIT INT TERM

AGENT_ARGS=(--listen "${DCWATCH_AGENT_LISTEN:-127.0.0.1:9478}")
.venv/bin/dcwatch agent "${AGENT_ARGS[@]}" "$@" &
pids+=($!)

# A short cold start so a first look shows a fitted model within minutes (production: 1 h).
ANALYZER_ARGS=(--listen 127.0.0.1:9479 --state-dir var/analyzer
               --target "http://${DCWATCH_AGENT_LISTEN:-127.0.0.1:9478}/metrics"
               --model-min-train "${DCWATCH_MODEL_MIN_TRAIN:-10m}"
               --alerting-alert-log var/alerts.jsonl)
AM=$(command -v prometheus-alertmanager || command -v alertmanager || true)
if [ -n "$AM" ]; then
  mkdir -p var/alertmanager
  cat > var/alertmanager/alertmanager.yml <<'YML'
route: {receiver: log, group_wait: 5s, group_interval: 30s, repeat_interval: 4h}
receivers: [{name: log}]
YML
  "$AM" --config.file=var/alertmanager/alertmanager.yml --storage.path=var/alertmanager \
    --web.listen-address=127.0.0.1:9093 --cluster.listen-address= --log.level=warn &
  pids+=($!)
  ANALYZER_ARGS+=(--alerting-alertmanagers http://127.0.0.1:9093)
fi
.venv/bin/dcwatch analyzer "${ANALYZER_ARGS[@]}" &
pids+=($!)

echo "dcwatch running: agent http://127.0.0.1:9478/  analyzer http://127.0.0.1:9479/" \
     "${AM:+ alertmanager http://127.0.0.1:9093/}  (Ctrl-C to stop)"
wait -n "${pids[@]}"
