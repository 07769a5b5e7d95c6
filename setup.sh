#!/usr/bin/env bash
# Set up pairforge in ./.venv, idempotently.
#   bash setup.sh          the library, the CLI and the default model (CPU torch)
#   bash setup.sh --dev    also the test tools, and (as root, with apt) the PostgreSQL and
#                          Chromium that the server end-to-end tests start
# torch is installed first and pinned to 2.13.0: on a CPU machine that is the CPU build;
# a bare `torch` requirement would pull a multi-GB CUDA build. Set PAIRFORGE_TORCH_SPEC
# to install another build (for example on a GPU host), PAIRFORGE_TORCH_INDEX_URL to
# take torch (only torch) from another index, e.g. https://download.pytorch.org/whl/cpu,
# and PAIRFORGE_VENV to put the environment elsewhere (deploy/Dockerfile: /opt/venv;
# a relative path is taken from this folder).
set -euo pipefail
cd "$(dirname "$0")"
dev=0
[[ "${1:-}" == "--dev" ]] && dev=1
python=${PYTHON:-python3}
venv=${PAIRFORGE_VENV:-.venv}
torch_spec=${PAIRFORGE_TORCH_SPEC:-torch==2.13.0}
torch_index=()
[[ -n "${PAIRFORGE_TORCH_INDEX_URL:-}" ]] && torch_index=(--index-url "$PAIRFORGE_TORCH_INDEX_URL")
if [[ ! -x $venv/bin/python ]]; then
  "$python" -m venv "$venv"
fi
pip=("$venv/bin/python" -m pip --disable-pip-version-check -q)
if ! "$venv/bin/python" -c "import torch" 2>/dev/null; then
  echo "setup: installing $torch_spec${PAIRFORGE_TORCH_INDEX_URL:+ from $PAIRFORGE_TORCH_INDEX_URL}"
  "${pip[@]}" install ${torch_index[@]+"${torch_index[@]}"} "$torch_spec"
fi
if [[ $dev == 1 ]]; then
  "${pip[@]}" install -e ".[dev]"
  if [[ $(id -u) == 0 ]] && command -v apt-get >/dev/null && [[ -x scripts/install_system_deps.sh ]]; then
    bash scripts/install_system_deps.sh
  fi
else
  "${pip[@]}" install -e .
fi
echo "setup: ready ($("$venv/bin/python" -c 'import torch, pipeline; print("pairforge", pipeline.__version__, "torch", torch.__version__)'))"
