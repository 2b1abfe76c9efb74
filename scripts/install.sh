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
# pip prints one line per package it downloads or installs ("Downloading ...", "Installing ..."):
# progress without the resolver's chatter.
# Under pipefail a failing pip still fails the script (the filter itself never does).
# (pip's warnings that a configured local index folder is absent are left out as well.)
pip_install() {
  "$VENV/bin/pip" install --progress-bar off --no-input "$@" 2> >(grep -v "is ignored: it is neither a file nor a directory" >&2) \
    | { grep -E "$PIP_LINES" || true; }
}
PIP_LINES="^(Downloading|Installing|Successfully|Building)"
step() { echo "crepe install [$1/3]: $2" >&2; }
step 1 "torch 2.14.1 + torchvision 0.29.1 from the default index: the build with CUDA libraries (~3 GB, several \
minutes; a CPU-only machine can use https://download.pytorch.org/whl/cpu instead, see README)"
pip_install torch==2.14.1 torchvision==0.29.1
step 2 "opacus (DP-SGD)"
pip_install opacus
step 3 "crepe itself (compiles the C++ extension, and the CUDA one when nvcc is found) and the test tools"
pip_install ".[test]"
"$VENV/bin/python" -c "import crepe._core" || { echo "crepe install: the extension did not build" >&2; exit 1; }
echo "installed crepe into $VENV"
