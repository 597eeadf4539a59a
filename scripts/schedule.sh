#!/usr/bin/env bash
# Serve the nightly retraining deployment. Uses PREFECT_API_URL when set; otherwise starts
# (or reuses) a local Prefect server bound to 127.0.0.1 and points the deployment at it.
set -euo pipefail
port="${PREFECT_PORT:-4200}"
if [ -z "${PREFECT_API_URL:-}" ]; then
  export PREFECT_API_URL="http://127.0.0.1:${port}/api"
  if ! curl -fsS "${PREFECT_API_URL}/health" >/dev/null 2>&1; then
    echo "no Prefect server configured: starting one on 127.0.0.1:${port} (log: .radops/prefect-server.log)"
    mkdir -p .radops
    nohup prefect server start --host 127.0.0.1 --port "${port}" >.radops/prefect-server.log 2>&1 &
    for _ in $(seq 1 60); do
      curl -fsS "${PREFECT_API_URL}/health" >/dev/null 2>&1 && break
      sleep 1
    done
    curl -fsS "${PREFECT_API_URL}/health" >/dev/null || { echo "Prefect server did not start; see .radops/prefect-server.log"; exit 1; }
  fi
fi
echo "serving the retraining deployment against ${PREFECT_API_URL} (Ctrl-C to stop; UI: ${PREFECT_API_URL%/api})"
exec python -m flows.retrain
