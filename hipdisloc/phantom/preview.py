"""Draw phantom radiographs with their annotation boxes, for a person to look at.

    python -m hipdisloc.phantom.preview COHORT_DIR OUT.png [--n 3] [--image-ids ID ...]

Reads the DICOM files through the same reader the pipeline uses, so the picture shows what the
model will see (MONOCHROME1 already inverted).
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from PIL import Image, ImageDraw

from hipdisloc.io.radiograph import read_radiograph
from hipdisloc.pictures import montage, save, to_rgb

BOX_COLOURS = {"R": (255, 80, 80), "L": (80, 200, 255)}


def preview(cohort_dir: Path, out: Path, n: int = 3, image_ids: list[str] | None = None,
            height: int = 360) -> Path:
    coco = json.loads((cohort_dir / "boxes.json").read_text())
    images = coco["images"]
    if image_ids:
        images = [im for im in images if im["file_name"] in set(image_ids)]
    else:
        step = max(1, len(images) // n)
        images = images[::step][:n]
    anns: dict[int, list] = {}
    for a in coco["annotations"]:
        anns.setdefault(a["image_id"], []).append(a)
    tiles = []
    for im in images:
        pixels = read_radiograph(cohort_dir / im["path"]).image
        tile = to_rgb(pixels)
        draw = ImageDraw.Draw(tile)
        for a in anns.get(im["id"], []):
            x, y, w, h = a["bbox"]
            draw.rectangle([x, y, x + w, y + h], outline=BOX_COLOURS[a["side"]],
                           width=max(1, tile.width // 250))
        draw.text((4, tile.height - 14), f"{im['file_name']} (synthetic)", fill=(255, 255, 0))
        scale = height / tile.height
        tiles.append(tile.resize((round(tile.width * scale), height), Image.BILINEAR))
    return save(montage(tiles), out)


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("cohort_dir", type=Path)
    parser.add_argument("out", type=Path)
    parser.add_argument("--n", type=int, default=3)
    parser.add_argument("--image-ids", nargs="*")
    args = parser.parse_args(argv)
    print(preview(args.cohort_dir, args.out, args.n, args.image_ids))


if __name__ == "__main__":
    main()
