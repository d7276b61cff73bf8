#!/usr/bin/env bash
# A throwaway repository: three epochs of a small model committed through the
# theta filter, a byte-exact checkout of epoch 1, and what the store holds.
#
#   ./install.sh && examples/quickstart.sh [DIR]
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
demo=${1:-$(mktemp -d "${TMPDIR:-/tmp}/theta-quickstart.XXXXXX")}
mkdir -p "$demo"
cd "$demo"

if [ -t 1 ]; then bold=$'\033[1m' plain=$'\033[0m'; else bold='' plain=''; fi
# Print a command as one would type it: an argument with a glob or a space is
# quoted, so `git theta track '*.pth'` is shown as the shell must receive it.
shown() {
    local word words=()
    for word in "$@"; do
        if [[ $word =~ ^[A-Za-z0-9_./:=@%+,^~-]+$ ]]; then words+=("$word")
        else words+=("'${word//\'/\'\\\'\'}'"); fi
    done
    printf '%s' "${words[*]}"
}
step() { printf '\n%s$ %s%s\n' "$bold" "$(shown "$@")" "$plain"; "$@"; }
model() { python3 "$here/synthetic_model.py" model.pth --epoch "$1"; }

git init -q -b main .
git config user.name "Quickstart"
git config user.email "quickstart@example.invalid"
# Harmless if ./install.sh already configured it globally; makes the demo self-contained.
git theta install --local >/dev/null

step git theta track '*.pth'
for epoch in 1 2 3; do
    model "$epoch"
    [ "$epoch" = 1 ] && epoch1=$(sha256sum model.pth | cut -d' ' -f1)
    git add model.pth .gitattributes
    git commit -q -m "epoch $epoch"
    echo "committed epoch $epoch ($(stat -c %s model.pth) bytes)"
done

step git log --oneline
echo
echo "What Git stores for model.pth is a small manifest:"
step git show HEAD:model.pth
step git diff --stat HEAD~1 HEAD
echo "A fine-tune step changes only the tensors it touched:"
git diff HEAD~1 HEAD -- model.pth | grep '^[-+]tensor' || true

step git checkout -q HEAD~2 -- model.pth
now=$(sha256sum model.pth | cut -d' ' -f1)
echo "epoch 1 sha256 when committed: $epoch1"
echo "epoch 1 sha256 after checkout: $now"
[ "$now" = "$epoch1" ] && echo "byte for byte: identical" || { echo "MISMATCH" >&2; exit 1; }
git checkout -q HEAD -- model.pth

step git theta ls-files
step git theta du
step git theta fsck
step git status --short
echo
echo "Metrics and parameter norms, commit by commit, and what changed since the last commit:"
step git theta-log
step git theta-diff HEAD~1
echo
echo "Demo repository: $demo"
