#!/usr/bin/env bash
# The main job on the embedded default: a phantom cohort through every stage that exists.
#   make demo   (installs first if needed)
# Override the output folder with DEMO_DIR=... (default: data/demo).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${HIPDISLOC_VENV:-$root/.venv}/bin/python"
out=${DEMO_DIR:-$root/data/demo}
workers=$(nproc)

echo "== 1/4 phantom: synthetic THA cohort (not patient data) -> $out/phantom"
"$py" -m hipdisloc.phantom out_dir="$out/phantom" n_patients=300 seed=0 prevalence=0.1 \
  image_size=768 workers="$workers" overwrite=true
"$py" -m hipdisloc.phantom.preview "$out/phantom" "$out/phantom_preview.png" --n 3

echo "== 2/4 prepare: validate, inclusion rules, decode, pad, resize 512 -> $out/prepared"
"$py" -m hipdisloc.prepare manifest="$out/phantom/manifest.csv" out_dir="$out/prepared" \
  workers="$workers"
cat "$out/prepared/table1.md"

echo "== 3/4 detect: YOLOv3 (MobileNetV2) hip detector, demo settings (~10 min) -> $out/detector"
"$py" -m hipdisloc.detect detector=yolov3_demo prepared_dir="$out/prepared" \
  boxes="$out/phantom/boxes.json" out_dir="$out/detector" trainer.enable_progress_bar=false

echo "== 4/4 crop: THA-side box, dilated 10 % sup/med/lat, 224 px -> $out/crops"
"$py" -m hipdisloc.crop prepared_dir="$out/prepared" out_dir="$out/crops" \
  detector="$out/detector/detector.pt"
"$py" -m hipdisloc.crop_preview "$out/crops" "$out/prepared" "$out/crop_preview.png"

cat <<MSG

The demo stops here: phantom, prepare, detect and crop are the stages it runs so far.
One fold of the classifier can be trained by hand (python -m hipdisloc.train, see the README);
the 10-fold sweep with DDP/W&B, the report and predict are open issues.
Look at: $out/phantom_preview.png, $out/prepared/table1.md, $out/detector/detector_metrics.json,
$out/crop_preview.png, $out/crops/crops.csv
MSG
