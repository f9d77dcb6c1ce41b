#!/usr/bin/env bash
# The main job on the embedded default: a phantom cohort through every stage that exists.
#   make demo   (installs first if needed)
# Override the output folder with DEMO_DIR=... (default: data/demo).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${HIPDISLOC_VENV:-$root/.venv}/bin/python"
out=${DEMO_DIR:-$root/data/demo}
workers=$(nproc)

echo "== 1/2 phantom: synthetic THA cohort (not patient data) -> $out/phantom"
"$py" -m hipdisloc.phantom out_dir="$out/phantom" n_patients=300 seed=0 prevalence=0.1 \
  image_size=768 workers="$workers" overwrite=true
"$py" -m hipdisloc.phantom.preview "$out/phantom" "$out/phantom_preview.png" --n 3

echo "== 2/2 prepare: validate, inclusion rules, decode, pad, resize 512 -> $out/prepared"
"$py" -m hipdisloc.prepare manifest="$out/phantom/manifest.csv" out_dir="$out/prepared" \
  workers="$workers"
cat "$out/prepared/table1.md"

cat <<MSG

The demo stops here: phantom and prepare are the stages implemented so far.
Not yet implemented (open issues): detect + crop (YOLOv3), train (10-fold ResNet18), report,
predict. Look at: $out/phantom_preview.png, $out/prepared/table1.md,
$out/prepared/exclusions.csv
MSG
