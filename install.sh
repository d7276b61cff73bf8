#!/usr/bin/env bash
# Installs git-theta-filter with its test extra into the current Python
# environment and configures git to use it (`git theta install --global`).
#
#   ./install.sh            install, then configure ~/.gitconfig
#   THETA_SKIP_GIT_INSTALL=1 ./install.sh   install the package only
set -euo pipefail
cd "$(dirname "$0")"

python=${PYTHON:-python3}
if ! "$python" -m pip --version >/dev/null 2>&1; then
    echo "install.sh: $python has no pip; set PYTHON to a Python 3.11+ with pip" >&2
    exit 1
fi

# torch==2.13.0 (CPU) is pinned in the test extra: other torch specs pull a
# multi-GB CUDA build.
"$python" -m pip install --quiet -e ".[test]"

# pyenv only sees new console scripts after a rehash.
if command -v pyenv >/dev/null 2>&1; then
    pyenv rehash
fi

# git-lfs is only needed by benchmarks/, to compare against it.
if ! command -v git-lfs >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq git-lfs) >/dev/null 2>&1 \
        || echo "install.sh: could not install git-lfs; benchmarks will skip its column" >&2
fi

if ! command -v git-theta >/dev/null 2>&1; then
    bindir=$("$python" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
    echo "install.sh: git-theta was installed to $bindir, which is not on PATH; add it and re-run" >&2
    exit 1
fi

if [ "${THETA_SKIP_GIT_INSTALL:-0}" != 1 ]; then
    # Run from $HOME so that the hooks are not installed into this checkout.
    (cd "$HOME" && git theta install --global)
fi
echo "git-theta-filter $(git-theta --version | awk '{print $2}') is installed."
