#!/usr/bin/env bash
# Set up everything hipdisloc needs in a virtual environment (default: ./.venv).
#
#   scripts/install.sh            # or: make install
#
# Re-runnable: when the environment already matches pyproject.toml, the lock file and this
# script, it returns in seconds. The slow part, mmcv's C++ ops, is built once per machine and
# cached (scripts/build_mmcv.sh).
#
# Environment: PYTHON (interpreter for a new venv, default python3.11 or python3),
#   HIPDISLOC_VENV (venv path), HIPDISLOC_CACHE (wheel cache, default ~/.cache/hipdisloc),
#   MMCV_FORCE_CUDA=1 to build mmcv's CUDA ops (docker/Dockerfile does).
set -euo pipefail

root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
venv=${HIPDISLOC_VENV:-"$root/.venv"}
python=${PYTHON:-$(command -v python3.11 || command -v python3)}
py="$venv/bin/python"

stamp_of_inputs() {
  cat "$root/pyproject.toml" "$root/requirements/lock.txt" "$root/scripts/install.sh" \
      "$root/scripts/build_mmcv.sh" | sha256sum | cut -d' ' -f1
  echo "MMCV_FORCE_CUDA=${MMCV_FORCE_CUDA:-0}"
}
stamp_file="$venv/.hipdisloc-install-stamp"
wanted=$(stamp_of_inputs)

if [ -f "$stamp_file" ] && [ "$(cat "$stamp_file")" = "$wanted" ] && [ -x "$py" ]; then
  echo "install: environment $venv is up to date"
  exit 0
fi

if [ ! -x "$py" ]; then
  echo "install: creating $venv with $python"
  "$python" -m venv "$venv"
fi
"$py" -c 'import sys; assert sys.version_info[:2] == (3, 11), "hipdisloc needs Python 3.11"'

pip() { "$py" -m pip --disable-pip-version-check "$@"; }
# setuptools<81: mmcv's setup.py imports pkg_resources.
pip install --quiet "pip>=24" "setuptools>=69,<81" wheel
# torch first (mmcv builds against it); on this machine kind these come from local disk.
pip install --quiet torch==2.14.1 torchvision==0.29.1

if ! "$py" -c 'import mmcv, mmcv.ops, sys; sys.exit(mmcv.__version__ != "2.1.0")' 2>/dev/null; then
  wheel=$("$root/scripts/build_mmcv.sh" "$py" | tail -n 1)
  pip install --quiet --no-deps --force-reinstall "$wheel"
fi
# mmcv's own runtime requirements (installed --no-deps above) are covered by the lock file.
pip install --quiet -c "$root/requirements/lock.txt" -e "$root[dev]"
"$py" -c 'import mmcv.ops, mmdet, hipdisloc' || { echo "install: import check failed" >&2; exit 1; }

echo "$wanted" > "$stamp_file"
echo "install: done ($venv)"
