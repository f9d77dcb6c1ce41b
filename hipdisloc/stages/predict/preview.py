"""A picture of a prediction run: saliency overlays of its highest- and lowest-scoring hips.

    python -m hipdisloc.stages.predict.preview PREDICT_OUT_DIR OUT.png [--n 4]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import pandas as pd
from PIL import Image, ImageDraw

from hipdisloc.pictures import montage, save


def preview(run_dir: Path, out: Path, n: int = 4) -> Path:
    pred = pd.read_csv(run_dir / "predictions.csv", dtype=str, keep_default_na=False)
    ok = pred[(pred["status"] == "ok") & (pred["overlay"] != "")].copy()
    if ok.empty:
        raise ValueError(f"{run_dir}: no scored hip with an overlay")
    ok["s"] = ok["score"].astype(float)
    ok = ok.sort_values("s", ascending=False)
    picked = pd.concat([ok.head((n + 1) // 2), ok.tail(n // 2)]).drop_duplicates("overlay")
    tiles = []
    for r in picked.itertuples():
        with Image.open(run_dir / r.overlay) as im:
            tile = im.convert("RGB")
        draw = ImageDraw.Draw(tile)
        spread = f" SD {float(r.score_sd):.2f}" if r.score_sd else ""
        calibrated = f", risk {float(r.calibrated_risk):.1%}" if r.calibrated_risk else ""
        draw.text((4, 4), f"side {r.side}: score {r.s:.2f}{spread}{calibrated}",
                  fill=(255, 255, 0))
        draw.text((4, 16), f"risk class: {r.risk_class}", fill=(255, 255, 0))
        tiles.append(tile)
    return save(montage(tiles, gap=6), out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("run_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--n", type=int, default=4)
    args = parser.parse_args(argv)
    print(preview(args.run_dir, args.out, args.n))


if __name__ == "__main__":
    main()
