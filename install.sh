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

started=$SECONDS
step() { printf 'install.sh: [%3ds] %s\n' "$((SECONDS - started))" "$*"; }

# torch==2.13.0 (CPU) is pinned in the test extra: other torch specs pull a
# multi-GB CUDA build. pip's own lines say which package it is on; its
# "Requirement already satisfied" chatter is left out.
step "installing git-theta-filter and its test extra (torch CPU, lightning, transformers:" \
    "about 8 minutes into an empty environment on a busy 2-core machine)"
"$python" -m pip install --progress-bar off -e ".[test]" \
    | sed -u -n -e 's/^ *\(Collecting\|Downloading\|Building\|Installing collected\|Successfully installed\) */  \1 /p'

# pyenv only sees new console scripts after a rehash.
if command -v pyenv >/dev/null 2>&1; then
    pyenv rehash
fi

# git-lfs is only needed by benchmarks/, to compare against it.
step "checking for git-lfs (only the benchmarks use it)"
if ! command -v git-lfs >/dev/null 2>&1 && command -v apt-get >/dev/null 2>&1 && [ "$(id -u)" = 0 ]; then
    (apt-get update -qq && apt-get install -y -qq git-lfs) >/dev/null 2>&1 \
        || echo "install.sh: could not install git-lfs; benchmarks will skip its column" >&2
fi

if ! command -v git-theta >/dev/null 2>&1; then
    echo "install.sh: git-theta was installed to $("$python" -c 'import sysconfig; print(sysconfig.get_path("scripts"))'), which is not on PATH; add it and re-run" >&2
    exit 1
fi

# `git theta --help` becomes `man git-theta`, and man looks in ../share/man of
# each PATH directory. An editable install does not copy data files, so place
# the pages beside the interpreter's scripts and beside the git-theta on PATH.
step "installing the man pages"
scripts=$("$python" -c 'import sysconfig; print(sysconfig.get_path("scripts"))')
for bindir in "$scripts" "$(dirname "$(command -v git-theta)")"; do
    mandir="$bindir/../share/man/man1"
    if mkdir -p "$mandir" 2>/dev/null && cp man/man1/*.1 "$mandir/" 2>/dev/null; then :; else
        echo "install.sh: could not install man pages to $mandir; use -h for help" >&2
    fi
done

if [ "${THETA_SKIP_GIT_INSTALL:-0}" != 1 ]; then
    step "configuring git: git theta install --global"
    # Run from $HOME so that the hooks are not installed into this checkout.
    (cd "$HOME" && git theta install --global)
fi
echo "git-theta-filter $(git-theta --version | awk '{print $2}') is installed."
