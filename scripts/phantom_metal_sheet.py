"""Contact sheet: one phantom radiograph by the old and the new renderer, and a real AP pelvis.

    OLD_PHANTOM=DIR python scripts/phantom_metal_sheet.py [IMAGE_ID] [OUT.png] [LO HI]

DIR holds old_canvas.py and old_anatomy.py, the renderer before c3f88fd
(scripts/docs_images.sh writes them from git).
"""
import os
import sys
from pathlib import Path

import numpy as np
from PIL import Image, ImageDraw

sys.path.insert(0, os.environ.get("OLD_PHANTOM", "/tmp/oldphantom"))
import old_anatomy  # noqa: E402

from hipdisloc.io.radiograph import read_radiograph  # noqa: E402
from hipdisloc.phantom import anatomy  # noqa: E402
from hipdisloc.phantom.cohort import acquisition_of, image_table  # noqa: E402
from hipdisloc.phantom.dicom import to_stored_pixels  # noqa: E402
from hipdisloc.phantom.population import CohortSettings  # noqa: E402

SHARED = Path(os.environ.get("HIPDISLOC_SHARED", Path(__file__).resolve().parents[2] / "shared"))
REAL = str(SHARED / "data" / "real" / "ddh-xray-dicom" / "331_DDH_10.dcm")
IMAGE_ID = sys.argv[1] if len(sys.argv) > 1 else "IMG0000075"
OUT = sys.argv[2] if len(sys.argv) > 2 else "docs/img/phantom_metal.png"
LO, HI = (float(v) for v in (sys.argv[3:5] if len(sys.argv) > 4 else (0.80, 1.0)))
SIZE, TILE, PAD = 768, 330, 6

_, images, _ = image_table(CohortSettings(n_patients=300, prevalence=0.1), 0)
row = images.set_index("image_id", drop=False).loc[IMAGE_ID].to_dict()


def stored_display(render):
    """Render, store as the DICOM would (bits, photometric), return display fraction."""
    scene, photometric, bits, rng = acquisition_of(row, 0, SIZE)
    r = render(scene, rng)
    stored = to_stored_pixels(r.image, bits, photometric).astype(np.float64)
    top = (1 << bits) - 1
    return (stored / top if photometric == "MONOCHROME2" else 1.0 - stored / top), r, scene, bits


def gray(img, lo, hi):
    return Image.fromarray((np.clip((img - lo) / (hi - lo), 0, 1) * 255).round().astype(np.uint8))


def caption(tile, text):
    d = ImageDraw.Draw(tile)
    d.rectangle([0, 0, tile.width, 12], fill=0)
    d.text((3, 0), text, fill=255)
    return tile


old, r_old, scene, bits = stored_display(old_anatomy.render)
new, r_new, _, _ = stored_display(anatomy.render)
side_cols = (np.arange(new.shape[1]) < new.shape[1] // 2) if row["side"] == "R" else (
    np.arange(new.shape[1]) >= new.shape[1] // 2)
implant = (r_new.implant_mask > 0) & side_cols[None, :]
rr, cc = np.nonzero(implant)
m = int(8 / scene.spacing_mm)
whole = np.s_[max(0, rr.min() - m): rr.max() + m, max(0, cc.min() - m): cc.max() + m]
ry, rx = np.nonzero((r_new.implant_mask == 1) & side_cols[None, :])
cy, cx = int(ry.mean()), int(rx.mean())
h = int(36 / scene.spacing_mm)
close = np.s_[max(0, cy - h): cy + int(1.1 * h), max(0, cx - int(1.4 * h)): cx + int(1.4 * h)]
BOTTOM = 440

full_h = round(TILE * old.shape[0] / old.shape[1])
tiles = [caption(gray(img, 0, 1).resize((TILE, full_h), Image.LANCZOS), f"{n}: full range")
         for n, img in (("old renderer", old), ("new renderer", new))]
zooms = []
for n, img in (("old", old), ("new", new)):
    z = gray(img[whole], LO, HI)
    z = z.resize((round(BOTTOM * z.width / z.height), BOTTOM), Image.LANCZOS)
    zooms.append(caption(z, f"{n}: implant, window {LO:.2f}-{HI:.2f}"))
real = read_radiograph(REAL).image
rt = gray(real, 0, 1).resize((full_h, full_h), Image.LANCZOS)
rt = caption(Image.merge("L", [rt]), "real AP pelvis, child, no implant")
half = (BOTTOM - PAD) // 2
cz = gray(new[close], LO, HI)
cz = caption(cz.resize((TILE, round(TILE * cz.height / cz.width)), Image.LANCZOS).crop(
    (0, 0, TILE, half)), "new: cup and head, same window")
prof = new[cy, max(0, cx - int(1.4 * h)): cx + int(1.4 * h)]
pimg = Image.new("L", (TILE, half), 0)
d = ImageDraw.Draw(pimg)
xs = np.linspace(0, TILE - 1, prof.size)
y_of = lambda v: 26 + (half - 34) * (1 - np.clip((v - LO) / (HI - LO), 0, 1))  # noqa: E731
d.line([(0, y_of(0.97)), (TILE, y_of(0.97))], fill=110)
d.line(list(zip(xs, y_of(prof), strict=True)), fill=255, width=1)
caption(pimg, "new: profile along the row through the cup centre")
d.text((4, 13), f"axis {LO:.2f} (bottom) to 1.00 (top); grey: 0.97", fill=170)

W = PAD + 3 * (TILE + PAD)
H = PAD + full_h + PAD + BOTTOM + PAD + 30
sheet = Image.new("L", (W, H), 40)
sheet.paste(tiles[0], (PAD, PAD))
sheet.paste(tiles[1], (2 * PAD + TILE, PAD))
sheet.paste(rt, (3 * PAD + 2 * TILE + (TILE - full_h) // 2, PAD))
y2 = 2 * PAD + full_h
for k, z in enumerate(zooms):
    sheet.paste(z, (PAD + k * (TILE + PAD) + (TILE - z.width) // 2, y2))
sheet.paste(cz, (3 * PAD + 2 * TILE, y2))
sheet.paste(pimg, (3 * PAD + 2 * TILE, y2 + half + PAD))
d = ImageDraw.Draw(sheet)
d.text((PAD, H - 28), f"Synthetic phantom radiograph {IMAGE_ID} (seed 0, {SIZE} px, {bits}-bit): "
       "same scene, same noise; old vs new metal rendering. Not patient data.", fill=225)
d.text((PAD, H - 15), "Top right: Fraiwan, Al-Kofahi, Hanatleh, Ibnian (2022), 'A dataset of DDH "
       "x-ray images', Mendeley Data, doi:10.17632/jf3pv98m9g.2, CC BY 4.0.", fill=225)
sheet.save(OUT, optimize=True)
print(OUT, sheet.size, row["side"], round(row["inclination_deg"]), round(row["anteversion_deg"]),
      row["head_diameter_mm"], row["cup_diameter_mm"])
for n, img, r in (("old", old, r_old), ("new", new, r_new)):
    m = r.implant_mask > 0
    print(f"{n} implant: max {img[m].max():.4f}, at full scale {(img[m] >= 1.0).mean():.4f}, "
          f"distinct {np.unique(img[m]).size}")
