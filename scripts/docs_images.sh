#!/usr/bin/env bash
# Every picture in docs/img/, drawn again from a finished demo (after `make demo`):
#   scripts/docs_images.sh [DATA_DIR] [OUT_DIR]       (default: data/demo outputs/demo)
#
#   phantom_preview.png  three radiographs of the demo's phantom with their boxes
#   crop_preview.png     a radiograph, the detector's box, the dilated box and the crop
#   report.png           the demo's report in headless Chromium (apt-get install chromium)
#   predict_overlay.png  predict on 30 new phantom patients (another seed): saliency overlays
#   review_sheet.png     detect mode=propose on the demo's radiographs: the review sheet
#   phantom_metal.png    one radiograph by the renderer before c3f88fd and by today's, beside a
#                        real AP pelvis (docs/phantom_metal.md)
# Synthetic data; nothing is downloaded.
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${HIPDISLOC_VENV:-$root/.venv}/bin/python"
cd "$root"
data=${1:-data/demo}
out=${2:-outputs/demo}
img=docs/img
tmp=$(mktemp -d)
trap 'rm -rf "$tmp"' EXIT
[ -f "$out/report/report.html" ] || { echo "docs_images: no $out/report/report.html (make demo first)" >&2; exit 2; }

"$py" -m hipdisloc.phantom.preview "$data/phantom" "$img/phantom_preview.png" --n 3
"$py" -m hipdisloc.stages.crop_preview "$data/crops" "$data/prepared" "$img/crop_preview.png"
scripts/report_screenshot.sh "$out/report/report.html" "$img/report.png" 2400

# new radiographs the study never saw: the demo's phantom settings, another seed
"$py" -m hipdisloc.phantom out_dir="$tmp/new" n_patients=30 seed=11 image_size=256 \
  prevalence=0.25 images_per_tha=1.0 workers=1 > /dev/null
"$py" -m hipdisloc.predict input="$tmp/new/dicom" sweep="$out" out="$tmp/predicted" \
  progress=false > /dev/null || true   # a hip without a confident box is a row, not a failure
"$py" -m hipdisloc.stages.predict.preview "$tmp/predicted" "$img/predict_overlay.png" --n 4

"$py" -m hipdisloc.detect mode=propose prepared_dir="$data/prepared" \
  detector_weights="$data/detector/detector.pt" out_dir="$tmp/proposals" > /dev/null
scripts/report_screenshot.sh "$tmp/proposals/review.html" "$img/review_sheet.png" 1400

mkdir -p "$tmp/oldphantom"
git show c3f88fd:hipdisloc/phantom/canvas.py > "$tmp/oldphantom/old_canvas.py"
git show c3f88fd:hipdisloc/phantom/anatomy.py \
  | sed 's/from hipdisloc.phantom.canvas import/from old_canvas import/' \
  > "$tmp/oldphantom/old_anatomy.py"
OLD_PHANTOM="$tmp/oldphantom" "$py" scripts/phantom_metal_sheet.py IMG0000075 \
  "$img/phantom_metal.png" 0.80 1.0
echo "docs_images: $img/ drawn from $data and $out"
