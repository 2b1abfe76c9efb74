#!/usr/bin/env bash
# Creates a virtual environment ($VENV, default .venv) holding crepe, its
# dependencies and the test tools. torch is pinned before anything asks for it:
# on a machine without torch an unpinned requirement pulls a multi-GB CUDA
# build (see ../shared/BUILD_NOTES.md). The C++ extension is compiled here;
# the CUDA module too when nvcc is found (CREPE_CUDA=OFF skips it).
set -euo pipefail
cd "$(dirname "$0")/.."
VENV=${VENV:-.venv}
python3 -m venv "$VENV"
"$VENV/bin/pip" install -qq torch==2.14.1 torchvision==0.29.1
"$VENV/bin/pip" install -qq opacus
"$VENV/bin/pip" install -qq ".[test]"
echo "installed crepe into $VENV"
