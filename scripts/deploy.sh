#!/usr/bin/env bash
# Create (or update) pairforge's work pools and deploy every flow in deploy/prefect.yaml.
#
# Needs PREFECT_API_URL pointing at a running server (see deploy/README.md); run it
# from anywhere, it works from the repository root. Idempotent: pools are overwritten
# with the same settings and deployments are updated in place.
set -euo pipefail
cd "$(dirname "$0")/.."
PREFECT="${PREFECT:-prefect}"

if [ -z "${PREFECT_API_URL:-}" ]; then
    echo "deploy.sh: PREFECT_API_URL is not set; start a server (prefect server start) and export it" >&2
    exit 2
fi

"$PREFECT" work-pool create cpu --type process --overwrite
"$PREFECT" work-pool create gpu-host --type process --overwrite
"$PREFECT" work-pool create gpu --type kubernetes --overwrite \
    --base-job-template deploy/gpu-kubernetes-job-template.json
"$PREFECT" --no-prompt deploy --prefect-file deploy/prefect.yaml --all
