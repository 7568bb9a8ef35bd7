#!/usr/bin/env bash
# On a GPU machine: capture the agent's real /metrics (under a short GPU load) and the machine's
# sysfs, for test fixtures. Usage: OUT=/some/dir bash bench/gpu_capture.sh
set -u
cd "$(dirname "$0")/.."
export PYTHONPATH=$PWD PYTHONUNBUFFERED=1
OUT=${OUT:-/tmp/gpu-capture}; mkdir -p "$OUT"
PY=${PY:-python3}
nvidia-smi -L; nvidia-smi --query-gpu=name,driver_version,memory.total,power.limit --format=csv
# A short load so utilisation, power and clocks are not idle values.
$PY - <<'PYLOAD' &
import time
try:
    import torch
    a = torch.randn(8192, 8192, device="cuda", dtype=torch.bfloat16)
    t = time.time()
    while time.time() - t < 25:
        (a @ a).sum().item()
except Exception as e:
    print("no load:", e)
PYLOAD
load=$!
sleep 4
$PY bench/capture_gpu_metrics.py "$OUT/h100.collectors.txt" --processes -n 5
$PY -m dcwatch.cli agent --listen 127.0.0.1:9478 --gpu-processes --log-level debug \
  2> "$OUT/agent.log" &
agent=$!
for i in $(seq 1 50); do curl -sf -o /dev/null http://127.0.0.1:9478/healthz && break; sleep 0.2; done
curl -s http://127.0.0.1:9478/metrics > "$OUT/h100-agent.metrics.txt"
curl -s -H 'Accept: application/openmetrics-text; version=1.0.0' \
  http://127.0.0.1:9478/metrics > "$OUT/h100-agent.openmetrics.txt"
curl -s http://127.0.0.1:9478/healthz; echo
t0=$(date +%s.%N); for i in $(seq 1 20); do curl -s -o /dev/null http://127.0.0.1:9478/metrics; done
echo "20 scrapes in $(echo "$(date +%s.%N) - $t0" | bc) s"
ps -o rss=,cputime= -p $agent
kill $agent; wait $agent 2>/dev/null
wait $load
$PY bench/capture_sysfs.py /tmp/sysfs-capture >/dev/null && \
  tar czf "$OUT/h100-sysfs.tar.gz" -C /tmp/sysfs-capture .
ls -la "$OUT"
