#!/usr/bin/env bash
# The main job on the embedded default: a phantom cohort through every stage that exists.
#   make demo   (installs first if needed)
# Override the output folder with DEMO_DIR=... (default: data/demo).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${HIPDISLOC_VENV:-$root/.venv}/bin/python"
out=${DEMO_DIR:-$root/data/demo}

echo "== 1/1 phantom: synthetic THA cohort (not patient data) -> $out/phantom"
"$py" -m hipdisloc.phantom out_dir="$out/phantom" n_patients=300 seed=0 prevalence=0.1 \
  image_size=512 workers="$(nproc)"
"$py" -m hipdisloc.phantom.preview "$out/phantom" "$out/phantom_preview.png" --n 3

cat <<MSG

The demo stops here: the phantom cohort is the only stage implemented so far.
Not yet implemented (see the open issues): prepare (DICOM ingestion, inclusion rules, Table 1),
detect + crop (YOLOv3), train (10-fold ResNet18), report, predict.
Look at the cohort: $out/phantom_preview.png, $out/phantom/manifest.csv, $out/phantom/boxes.json
MSG
