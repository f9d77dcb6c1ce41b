#!/usr/bin/env bash
# Build mmcv 2.1.0 with its C++ ops from the PyPI source distribution, once per machine.
#
# Why: mmdet 3.3.0 needs mmcv<2.2.0 *with* mmcv._ext; PyPI has no wheel of mmcv 2.1.0 for
# torch 2.14, and torch 2.14's headers need C++20 while mmcv's setup.py hard-codes C++17.
# The wheel is tied to the torch version, so it is cached under a torch-specific folder and
# reused by every later install on this machine (CI included).
#
# Usage: scripts/build_mmcv.sh PYTHON   (PYTHON: an interpreter that already has torch and
#        setuptools<81). Prints the path of the wheel on its last line.
set -euo pipefail

py=${1:?usage: build_mmcv.sh PYTHON}
# Absolute path without resolving symlinks (a venv's python is a symlink to the base one).
py="$(cd "$(dirname "$py")" && pwd)/$(basename "$py")"
mmcv_version=2.1.0
torch_version=$("$py" -c 'import torch; print(torch.__version__.split("+")[0])')
py_tag=$("$py" -c 'import sys; print(f"cp{sys.version_info.major}{sys.version_info.minor}")')
force_cuda=${MMCV_FORCE_CUDA:-0}
cache_root=${HIPDISLOC_CACHE:-$HOME/.cache/hipdisloc}
wheel_dir="$cache_root/wheels/mmcv-$mmcv_version-torch$torch_version-$py_tag-cuda$force_cuda"
mkdir -p "$wheel_dir"

find_wheel() { ls "$wheel_dir"/mmcv-"$mmcv_version"-*.whl 2>/dev/null | head -n 1; }

# One build at a time per machine: a second install waits for the first, then reuses its wheel.
exec 9>"$wheel_dir/.lock"
flock 9

wheel=$(find_wheel || true)
if [ -n "$wheel" ]; then
  echo "mmcv: reusing cached wheel" >&2
  echo "$wheel"
  exit 0
fi

work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
echo "mmcv: building $mmcv_version with ops for torch $torch_version (about 10 minutes on 2 cores)" >&2
"$py" -m pip download --quiet --no-deps --no-build-isolation --no-binary :all: "mmcv==$mmcv_version" -d "$work" >&2
tar -xzf "$work"/mmcv-"$mmcv_version".tar.gz -C "$work"
src="$work/mmcv-$mmcv_version"
grep -q -- '-std=c++17' "$src/setup.py" || { echo "mmcv: setup.py no longer mentions -std=c++17; check the patch" >&2; exit 1; }
sed -i 's/-std=c++17/-std=c++20/g' "$src/setup.py"
(
  cd "$src"
  MMCV_WITH_OPS=1 FORCE_CUDA="$force_cuda" MAX_JOBS="${MAX_JOBS:-$(nproc)}" \
    "$py" -m pip wheel . --no-build-isolation --no-deps -w "$work/dist" >&2
)
built=$(ls "$work"/dist/mmcv-*.whl)
# Atomic publish: a killed build leaves no wheel behind.
cp "$built" "$wheel_dir/.partial.whl"
mv "$wheel_dir/.partial.whl" "$wheel_dir/$(basename "$built")"
find_wheel
