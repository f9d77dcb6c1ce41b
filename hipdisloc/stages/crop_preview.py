"""Picture of the crop stage: radiograph, chosen box, dilated box, final crop.

    python -m hipdisloc.stages.crop_preview CROPS_DIR PREPARED_DIR OUT.png [--n 2]
"""

from __future__ import annotations

import argparse
from pathlib import Path

import numpy as np
import pandas as pd
from PIL import Image, ImageDraw

from hipdisloc.io import cache
from hipdisloc.pictures import montage, save, to_rgb


def crop_preview(crops_dir: Path, prepared_dir: Path, out: Path, n: int = 2) -> Path:
    crops = pd.read_csv(crops_dir / "crops.csv", dtype={"image_id": str})
    crops = crops[crops["crop_path"].notna()]
    rows = [crops[crops["side"] == s].iloc[0] for s in ("R", "L") if (crops["side"] == s).any()]
    tiles = []
    for r in rows[:n]:
        image = to_rgb(cache.decode(np.asarray(cache.load(prepared_dir / r["cache_path"]))))
        draw = ImageDraw.Draw(image)
        draw.rectangle([r["box_x0"], r["box_y0"], r["box_x1"], r["box_y1"]],
                       outline=(255, 60, 60), width=2)
        draw.rectangle([r["crop_x0"], r["crop_y0"], r["crop_x1"], r["crop_y1"]],
                       outline=(255, 220, 0), width=2)
        draw.text((4, 4), f"THA side {r['side']}, {r['box_source']} box "
                          f"(score {r['score']:.2f}) + 10 % dilation", fill=(255, 255, 0))
        crop = to_rgb(cache.decode(np.asarray(cache.load(crops_dir / r["crop_path"]))))
        crop = crop.resize((image.height, image.height), Image.BILINEAR)
        tiles.append(montage([image, crop], gap=6))
    return save(montage(tiles, horizontal=False, gap=6), out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("crops_dir", type=Path)
    parser.add_argument("prepared_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--n", type=int, default=2)
    args = parser.parse_args(argv)
    print(crop_preview(args.crops_dir, args.prepared_dir, args.out, args.n))


if __name__ == "__main__":
    main()
