#!/bin/bash
# On a GPU host: a gateway with a kind: nvml telemetry target, a stand-in engine process holding GPU memory
# (gpu_holder.py), then the query API's telemetry and diagnosis, /metrics, and nvml_probe.py --smi beside
# nvidia-smi. Run from the repository root with infersight importable; OUT=folder for the files.
set -u
OUT=${OUT:?set OUT to a folder for the output files}
W=$(mktemp -d)
python3 benchmarks/gpu_holder.py 75 > $W/holder.log 2>&1 &
HOLDER=$!
cat > $W/gw.yaml <<YAML
server: {host: 127.0.0.1, port: 18700}
storage: {path: $W/data}
backends: [{name: sim, type: openai, url: 'http://127.0.0.1:18701/v1', models: [sim-bench]}]
tenants: [{id: acme, api_keys: [sk-acme]}]
admin_api_keys: [sk-admin]
telemetry:
  interval_s: 2
  timeout_s: 2
  targets:
    - {instance: gpu-host, kind: nvml, process_models: {"gpu_holder": holder-model}}
YAML
python3 -m infersight.cli check-config --config $W/gw.yaml > $OUT/check-config.txt 2>&1
python3 -m infersight.cli serve --config $W/gw.yaml > $W/serve.log 2>&1 &
GW=$!
for i in $(seq 60); do curl -sf http://127.0.0.1:18700/healthz >/dev/null && break; sleep 1; done
for i in $(seq 60); do grep -q holding $W/holder.log && break; sleep 1; done
sleep 12
curl -s -H 'Authorization: Bearer sk-admin' 'http://127.0.0.1:18700/api/v1/telemetry?window=5m&metric=gpu_utilization,gpu_memory_used_bytes,gpu_memory_total_bytes,gpu_memory_utilization,process_gpu_memory_bytes,gpu_power_w,gpu_sm_clock_mhz,gpu_temperature_c,gpu_index' > $OUT/telemetry.json
curl -s -H 'Authorization: Bearer sk-admin' 'http://127.0.0.1:18700/api/v1/diagnosis?window=5m' > $OUT/diagnosis.json
curl -s http://127.0.0.1:18700/metrics | grep -i -E "gpu|telemetry" | head -60 > $OUT/metrics.txt
nvidia-smi --query-gpu=index,utilization.gpu,memory.used,memory.total,power.draw --format=csv > $OUT/smi.txt
nvidia-smi --query-compute-apps=pid,process_name,used_memory --format=csv >> $OUT/smi.txt
python3 benchmarks/nvml_probe.py --repeat 50 --smi --map gpu_holder=holder-model > $OUT/nvml.json 2> $OUT/nvml.err
kill $GW; wait $GW; kill $HOLDER 2>/dev/null
cp $W/serve.log $OUT/serve.log
python3 - <<'PY'
import json, os
out = os.environ["OUT"]
t = json.load(open(f"{out}/telemetry.json"))
rows = t.get("data", [])
print("telemetry samples:", len(rows), "truncated:", t.get("truncated"))
last = {}
for r in rows:
    last[(r["metric"], r.get("gpu"), r.get("model_id"))] = r["value"]
for k, v in sorted(last.items(), key=str):
    print(k, v)
print(open(f"{out}/smi.txt").read())
n = json.load(open(f"{out}/nvml.json"))
print("collect_ms", n["collect_ms"])
for row in (n.get("nvidia_smi") if isinstance(n.get("nvidia_smi"), list) else [n.get("nvidia_smi")]):
    print(row)
PY
head -c 1500 $OUT/diagnosis.json; echo; head -30 $OUT/metrics.txt; tail -5 $OUT/serve.log; cat $OUT/check-config.txt | head -20
