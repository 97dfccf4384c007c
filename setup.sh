#!/usr/bin/env bash
# Set up bibaddiff in a virtual environment (.venv): torch + torchvision first, then the package with its
# workflow and test extras, at the versions in envs/constraints.txt. Safe to rerun: it only installs what is missing.
#   TORCH_SPEC="torch==2.14.1 torchvision==0.29.1"  the torch pair to install (pick your CUDA build's index with
#                                                    PIP_INDEX_URL/PIP_EXTRA_INDEX_URL); skipped if .venv has torch
#   VENV=.venv  PYTHON=python3
set -euo pipefail
cd "$(dirname "$0")"
VENV=${VENV:-.venv}
PYTHON=${PYTHON:-python3}
TORCH_SPEC=${TORCH_SPEC:-"torch==2.14.1 torchvision==0.29.1"}

[ -x "$VENV/bin/python" ] || "$PYTHON" -m venv "$VENV"
if ! "$VENV/bin/python" -c "import torch, torchvision" 2>/dev/null; then
    echo "setup: installing $TORCH_SPEC"
    # shellcheck disable=SC2086
    "$VENV/bin/python" -m pip install $TORCH_SPEC
fi
echo "setup: installing bibaddiff[workflow,test]"
"$VENV/bin/python" -m pip install -e ".[workflow,test]" -c envs/constraints.txt
"$VENV/bin/python" -c "import bibaddiff, torch, diffusers, snakemake; print('setup: ok, torch', torch.__version__, 'diffusers', diffusers.__version__)"
# Fashion-MNIST (dataset.source: fashion_mnist) comes from Debian's dataset-fashion-mnist package; nothing else needs
# it (the default run uses the bundled digits), so a failed install only prints how to get the files.
FASHION_MNIST=/usr/share/datasets/fashion-mnist
if [ ! -d "$FASHION_MNIST" ]; then
    if [ "$(id -u)" = 0 ] && command -v apt-get >/dev/null && apt-get install -y -qq dataset-fashion-mnist >/dev/null 2>&1; then
        echo "setup: installed Fashion-MNIST in $FASHION_MNIST"
    else
        echo "setup: for dataset.source fashion_mnist, run 'sudo apt-get install dataset-fashion-mnist' (Debian/Ubuntu) or set dataset.root to a folder with Fashion-MNIST's four IDX files"
    fi
fi
