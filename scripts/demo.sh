#!/usr/bin/env bash
# The main job on the embedded default: the whole 10-fold study on the demo phantom.
#   make demo   (installs first if needed)
# Data under data/demo/, results under outputs/demo/ (override with DEMO_DIR=...: both go there).
set -euo pipefail
root="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
py="${HIPDISLOC_VENV:-$root/.venv}/bin/python"
cd "$root"
data=${DEMO_DIR:+$DEMO_DIR/data}
data=${data:-data/demo}
out=${DEMO_DIR:+$DEMO_DIR/outputs}
out=${out:-outputs/demo}
echo "== the 10-fold study on the demo phantom (synthetic, not patient data)"
echo "   phantom -> prepare -> detect -> crop -> self-supervised backbone (first fold only) -> 10 folds -> Tables 2, 3, report"
"$py" -m hipdisloc.train experiment=demo fold=0..9 -m paths.data_dir="$data" paths.out_dir="$out"
"$py" -m hipdisloc.phantom.preview "$data/phantom" "$out/phantom_preview.png" --n 3
"$py" -m hipdisloc.stages.crop_preview "$data/crops" "$data/prepared" "$out/crop_preview.png"
cat <<MSG
Done. Look at: $out/report/report.html (the whole study in one page), $out/table2.md,
$out/table3.md, $out/calibration.json, $out/fold*/test_metrics.json,
$data/prepared/table1.md, $data/detector/detector_metrics.json, $out/crop_preview.png.
W&B runs (offline unless credentials are configured): $out/fold*/wandb, $out/wandb
  upload: .venv/bin/wandb sync $out/fold*/wandb/offline-run-* $out/wandb/offline-run-*
MSG
