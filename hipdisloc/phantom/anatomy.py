"""Render one AP pelvis radiograph of the phantom: bones, soft tissue, implants, acquisition.

:func:`sample_scene` draws everything about one radiograph that is not part of the cohort
tables (pose, exposure, noise, collimation, markers, bowel gas) from the image's own random
stream, independently of the label. :func:`render` turns a scene into a display image (float32
in [0, 1], bone and metal bright), an implant mask and one annotation box per operated hip,
drawn by the paper's rule:

* medial edge on the midline through the symphysis,
* lateral edge tangent to the greater trochanter,
* inferior edge tangent to the inferior pubic ramus,
* superior edge tangent to the top of the cup.

Metal is not one flat value: the cup shell and the stem are titanium, the head cobalt-chrome
(denser), each adding its projected path length times its attenuation to the log-domain density
like bone and soft tissue do. The detector response (:func:`detector_response`) is linear up to
a knee (soft tissue and bone look as before) and compresses what lies above it smoothly and
strictly increasingly towards :data:`METAL_CEILING` < 1, so a longer path through metal is
always brighter (the shell's rim brighter than its dome, the head a brighter disc inside the cup)
and no implant pixel reaches the top stored value, noise included.
"""

from __future__ import annotations

import math
from dataclasses import dataclass, field

import numpy as np
from scipy.ndimage import gaussian_filter

from hipdisloc.phantom.canvas import (
    Canvas,
    ellipsoid,
    elliptic_ring,
    hemispherical_shell,
    sphere,
    tube,
)

# Effective linear attenuation (1/mm) of each material, in the log-signal domain. The alloys are
# tuned, not tabulated (the phantom's scale is its own), but keep the physical order: cobalt-
# chrome ~3x titanium, both far above cortical bone. "metal" (generic) reads as titanium.
ATTENUATION = {"soft": 0.0032, "bone": 0.013, "metal": 0.15, "titanium": 0.15, "cocr": 0.5}
# Detector response: identity below KNEE, then a power-law shoulder rising to METAL_CEILING
# (never reached); SHOULDER_POWER sets how slowly it saturates (smaller: more log-like).
KNEE = 0.75
METAL_CEILING = 0.97
SHOULDER_POWER = 0.5
IMPLANT_LABELS = {"cup": 1, "head": 2, "stem": 3}
SIDE_SIGN = {"R": -1, "L": 1}  # the patient's right is on the image left (radiographic view)


@dataclass(frozen=True)
class Implant:
    inclination_deg: float
    anteversion_deg: float
    head_diameter_mm: float
    cup_diameter_mm: float
    offset_mm: float
    head_out_of_cup: bool = False  # a radiograph taken after the hip dislocated


@dataclass(frozen=True)
class Scene:
    width: int
    height: int
    spacing_mm: float
    rotation_deg: float
    view_centre_mm: tuple[float, float]
    pelvis_scale: float
    body_width: float
    native_offset_mm: float
    neck_shaft_deg: float
    implants: dict[str, Implant]  # side ("L"/"R") -> implant
    exposure_photons: float
    contrast: float
    black_level: float
    gamma: float
    collimation: tuple[float, float, float, float]  # left, top, right, bottom (fractions)
    collimation_bright: bool
    markers: tuple[tuple[str, float, float], ...]  # (letter, col frac, row frac)
    gas: tuple[tuple[float, float, float, float], ...] = field(default=())  # x, y, a, b (mm)


@dataclass
class Rendering:
    image: np.ndarray  # float32 (H, W) in [0, 1], bone bright
    implant_mask: np.ndarray  # uint8 (H, W): 0 none, 1 cup, 2 head, 3 stem
    boxes: dict[str, tuple[float, float, float, float]]  # side -> (x0, y0, x1, y1) pixels


def sample_scene(rng: np.random.Generator, image_size: int, implants: dict[str, Implant],
                 pelvis_scale: float, body_width: float, native_offset_mm: float) -> Scene:
    """Draw the acquisition of one radiograph. Nothing here depends on the label."""
    width = int(image_size)
    height = int(round(image_size * rng.uniform(0.78, 0.88)))
    field_of_view = rng.uniform(370.0, 440.0)  # mm across the detector, magnification included
    collimate = rng.random() < 0.5
    markers: list[tuple[str, float, float]] = []
    roll = rng.random()
    letters = ["R"] if roll < 0.45 else ["L"] if roll < 0.8 else ["R", "L"] if roll < 0.9 else []
    for letter in letters:
        col = rng.uniform(0.04, 0.2) if letter == "R" else rng.uniform(0.8, 0.96)
        markers.append((letter, col, rng.uniform(0.05, 0.3)))
    gas = tuple(
        (rng.uniform(-70, 70), rng.uniform(-170, -60), rng.uniform(8, 30), rng.uniform(6, 20))
        for _ in range(int(rng.integers(0, 5)))
    )
    return Scene(
        width=width,
        height=height,
        spacing_mm=field_of_view / width,
        rotation_deg=rng.normal(0.0, 2.0),
        view_centre_mm=(rng.normal(0.0, 12.0), rng.normal(-55.0, 12.0)),
        pelvis_scale=pelvis_scale,
        body_width=body_width,
        native_offset_mm=native_offset_mm,
        neck_shaft_deg=rng.normal(130.0, 4.0),
        implants=implants,
        exposure_photons=rng.uniform(2e3, 2e4),
        contrast=rng.uniform(0.55, 0.68),
        black_level=rng.uniform(0.0, 0.15),
        gamma=rng.uniform(0.8, 1.25),
        collimation=tuple(rng.uniform(0.0, 0.07, 4)) if collimate else (0.0, 0.0, 0.0, 0.0),
        collimation_bright=bool(rng.random() < 0.5),
        markers=tuple(markers),
        gas=gas,
    )


def _unit(angle_deg: float) -> tuple[float, float]:
    a = math.radians(angle_deg)
    return math.cos(a), math.sin(a)


def _draw_pelvis(c: Canvas, k: float) -> None:
    c.add("bone", (0, -215 * k), 40 * k, ellipsoid(0, -215 * k, 28 * k, 17 * k, 40))  # L5
    c.add("bone", (0, -140 * k), 70 * k, ellipsoid(0, -140 * k, 46 * k, 62 * k, 22))  # sacrum
    c.add("bone", (0, -72 * k), 75 * k, elliptic_ring(0, -72 * k, 64 * k, 48 * k, 5 * k))
    for sgn in (-1, 1):
        side = "R" if sgn < 0 else "L"
        wing = (sgn * 112 * k, -128 * k)
        c.add("bone", wing, 85 * k, ellipsoid(*wing, 60 * k, 74 * k, 9, angle_deg=-sgn * 22))
        c.add("bone", wing, 85 * k,
              elliptic_ring(*wing, 60 * k, 74 * k, 4.5 * k, -sgn * 22, upper_only=True))
        body = (sgn * 88 * k, -62 * k)
        c.add("bone", body, 45 * k, ellipsoid(*body, 34 * k, 40 * k, 20))
        # acetabular roof and teardrop
        c.add("bone", (sgn * 90 * k, -58 * k), 40 * k,
              ellipsoid(sgn * 90 * k, -58 * k, 33 * k, 22 * k, 16))
        c.add("bone", (sgn * 66 * k, -28 * k), 12 * k,
              ellipsoid(sgn * 66 * k, -28 * k, 4 * k, 9 * k, 14))
        # pubis, ischium and the obturator foramen between them (a thin membrane)
        c.add("bone", (sgn * 46 * k, 10 * k), 35 * k,
              ellipsoid(sgn * 46 * k, 10 * k, 27 * k, 30 * k, 6, sgn * 25))
        c.add("bone", (sgn * 46 * k, 10 * k), 40 * k,
              elliptic_ring(sgn * 46 * k, 10 * k, 22 * k, 25 * k, 8 * k, sgn * 25),
              name=f"obturator_{side}")
        c.add("bone", (sgn * 42 * k, -20 * k), 45 * k,
              tube((sgn * 14 * k, -8 * k), (sgn * 72 * k, -32 * k), 9 * k))
        c.add("bone", (sgn * 64 * k, 36 * k), 20 * k,
              ellipsoid(sgn * 64 * k, 36 * k, 16 * k, 12 * k, 24))
        c.add("bone", (sgn * 11 * k, 6 * k), 20 * k,
              ellipsoid(sgn * 11 * k, 6 * k, 9 * k, 17 * k, 28))  # pubic body (symphysis)


def _draw_femur(c: Canvas, scene: Scene, side: str) -> None:
    k = scene.pelvis_scale
    sgn = SIDE_SIGN[side]
    implant = scene.implants.get(side)
    hip = (sgn * 95 * k, -40 * k)
    tilt = math.radians(8.0)
    down = (-sgn * math.sin(tilt), math.cos(tilt))  # shaft axis, going down and medially
    lateral = (sgn * math.cos(tilt), math.sin(tilt))  # perpendicular, pointing laterally
    offset = implant.offset_mm if implant else scene.native_offset_mm * k
    along = offset / math.tan(math.radians(180.0 - scene.neck_shaft_deg))
    # J: where the neck axis meets the shaft axis.
    j = (hip[0] + offset * lateral[0] + along * down[0],
         hip[1] + offset * lateral[1] + along * down[1])

    def at(base, d_down, d_lat):
        return (base[0] + d_down * down[0] + d_lat * lateral[0],
                base[1] + d_down * down[1] + d_lat * lateral[1])

    shaft_top, shaft_end = at(j, -15 * k, 0), at(j, 320 * k, 0)
    c.add("bone", at(j, 150 * k, 0), 180 * k,
          tube(shaft_top, shaft_end, 15 * k, 14 * k, inner_ratio=0.6, inner_fill=0.35))
    gt = at(j, -26 * k, 15 * k)
    c.add("bone", gt, 28 * k, ellipsoid(*gt, 14 * k, 21 * k, 32, angle_deg=-sgn * 8),
          name=f"greater_trochanter_{side}")
    lt = at(j, 28 * k, -14 * k)
    c.add("bone", lt, 12 * k, ellipsoid(*lt, 7 * k, 9 * k, 18))
    # soft tissue of the thigh
    c.add("soft", at(j, 200, 0), 330 * k,
          tube(at(j, 40, 0), at(j, 420, 0), 88 * scene.body_width), combine="max")

    if implant is None:
        c.add("bone", hip, 30 * k, sphere(*hip, 24 * k, inner_r=21.5 * k, inner_fill=0.3))
        c.add("bone", j, 60 * k, tube(hip, j, 14 * k, inner_ratio=0.6, inner_fill=0.5))
        return

    cup_r = implant.cup_diameter_mm / 2
    inc = math.radians(implant.inclination_deg)
    rim = (sgn * math.cos(inc), -math.sin(inc))
    dome = (-sgn * math.sin(inc), -math.cos(inc))
    c.add("titanium", hip, cup_r + 2,
          hemispherical_shell(*hip, cup_r, cup_r - 3.0, rim, dome, implant.anteversion_deg),
          name=f"cup_{side}")
    head_r = implant.head_diameter_mm / 2
    head = hip
    if implant.head_out_of_cup:
        head = (hip[0] + sgn * 0.5 * cup_r, hip[1] - 1.2 * cup_r)
    c.add("cocr", head, head_r + 2, sphere(*head, head_r), name=f"head_{side}")
    # Bony neck resected; the prosthetic neck and stem run down the canal.
    neck_cut = (j[0] + 0.3 * (hip[0] - j[0]), j[1] + 0.3 * (hip[1] - j[1]))
    c.add("bone", j, 30 * k, tube(neck_cut, j, 15 * k, inner_ratio=0.6, inner_fill=0.5))
    c.add("titanium", neck_cut, 80, tube(head, neck_cut, 6.0, 7.0), name=f"stem_{side}")
    stem_len = 130 * k
    c.add("titanium", at(j, stem_len / 2, 0), stem_len / 2 + 20,
          tube(at(j, -8, 4), at(j, stem_len, 0), 9.0, 4.5), name=f"stem_{side}")


def _draw_marker(image: np.ndarray, letter: str, col_frac: float, row_frac: float,
                 spacing_mm: float) -> None:
    """Burn a lead side marker (radio-opaque letter) into the image."""
    glyph = np.array(MARKER_GLYPHS[letter], dtype=float)
    cell = max(1, int(round(2.4 / spacing_mm)))  # letters ~17 mm tall
    pattern = np.kron(glyph, np.ones((cell, cell)))
    h, w = image.shape
    r0, c0 = int(row_frac * h), int(col_frac * w)
    r1, c1 = min(h, r0 + pattern.shape[0]), min(w, c0 + pattern.shape[1])
    region = image[r0:r1, c0:c1]
    np.maximum(region, 0.97 * pattern[: r1 - r0, : c1 - c0], out=region)


MARKER_GLYPHS = {
    "R": ["11110", "10001", "10001", "11110", "10100", "10010", "10001"],
    "L": ["10000", "10000", "10000", "10000", "10000", "10000", "11111"],
}
MARKER_GLYPHS = {k: [[int(ch) for ch in row] for row in v] for k, v in MARKER_GLYPHS.items()}


def _box(c: Canvas, side: str, k: float) -> tuple[float, float, float, float] | None:
    cup, gt = c.masks[f"cup_{side}"], c.masks[f"greater_trochanter_{side}"]
    ramus = c.masks[f"obturator_{side}"]
    if not cup.any() or not gt.any() or not ramus.any():
        return None
    midline_col, _ = c.to_pixel(0.0, 6 * k)  # the symphysis
    gt_cols = np.nonzero(gt.any(axis=0))[0]
    lateral = float(gt_cols.min()) if side == "R" else float(gt_cols.max() + 1)
    top = float(np.nonzero(cup.any(axis=1))[0].min())
    bottom = float(np.nonzero(ramus.any(axis=1))[0].max() + 1)
    x0, x1 = sorted((lateral, float(np.clip(midline_col, 0, c.width))))
    return (x0, top, x1, bottom)


def detector_response(y: np.ndarray) -> np.ndarray:
    """Display value of the (gamma-corrected) signal ``y``: y below :data:`KNEE`, above it
    ``KNEE + H * (1 - (1 + (y - KNEE) / (H * p)) ** -p)`` with ``H = METAL_CEILING - KNEE`` and
    ``p = SHOULDER_POWER``: continuous with slope 1 at the knee, strictly increasing, and below
    the ceiling for every finite ``y``.
    """
    headroom = METAL_CEILING - KNEE
    out = np.array(y, copy=True)
    high = out > KNEE  # metal and the densest bone: a small share of the pixels
    over = out[high] - KNEE
    out[high] = KNEE + headroom * (
        1.0 - (1.0 + over / (headroom * SHOULDER_POWER)) ** -SHOULDER_POWER)
    return out


def _outside_field(scene: Scene) -> np.ndarray:
    left, top, right, bottom = scene.collimation
    h, w = scene.height, scene.width
    outside = np.ones((h, w), dtype=bool)
    outside[int(top * h): h - int(bottom * h), int(left * w): w - int(right * w)] = False
    return outside


def burned_in(scene: Scene) -> np.ndarray:
    """Pixels (bool, H x W) that show no anatomy: collimated border and lead markers."""
    marks = np.zeros((scene.height, scene.width), np.float32)
    for letter, col, row in scene.markers:
        _draw_marker(marks, letter, col, row, scene.spacing_mm)
    return _outside_field(scene) | (marks > 0)


def project(scene: Scene) -> Canvas:
    """Path lengths (mm) of every material and the named footprints of one scene."""
    c = Canvas(scene.width, scene.height, scene.spacing_mm, scene.rotation_deg,
               scene.view_centre_mm)
    k = scene.pelvis_scale
    bw = scene.body_width
    c.add("soft", (0, -90), 400, ellipsoid(0, -90, 172 * k * bw, 300, 250 * bw), combine="max")
    for gx, gy, a, b in scene.gas:
        c.add("soft", (gx, gy), max(a, b), lambda x, y, gx=gx, gy=gy, a=a, b=b:
              -ellipsoid(gx, gy, a, b, 2 * b)(x, y))
    _draw_pelvis(c, k)
    for side in ("R", "L"):
        _draw_femur(c, scene, side)
    return c


def render(scene: Scene, rng: np.random.Generator) -> Rendering:
    c = project(scene)
    k = scene.pelvis_scale
    density = sum(ATTENUATION[m] * np.clip(c.layers[m], 0.0, None) for m in c.layers
                  if m in c.drawn)
    # Quantum noise: fewer photons reach the detector behind dense material.
    photons = scene.exposure_photons * (scene.spacing_mm / 0.2) ** 2 * np.exp(-density)
    density = density + rng.standard_normal(density.shape).astype(np.float32) / np.sqrt(
        np.maximum(photons, 1.0))
    density = gaussian_filter(density, 0.6)
    signal = np.maximum((density - scene.black_level) * scene.contrast, 0.0) ** scene.gamma
    image = detector_response(signal).astype(np.float32)

    h, w = image.shape
    image[_outside_field(scene)] = 0.92 if scene.collimation_bright else 0.0
    for letter, col, row in scene.markers:
        _draw_marker(image, letter, col, row, scene.spacing_mm)

    mask = np.zeros((h, w), np.uint8)
    for part, label in IMPLANT_LABELS.items():
        for side in scene.implants:
            mask[c.masks[f"{part}_{side}"]] = label
    boxes = {}
    for side in scene.implants:
        box = _box(c, side, k)
        if box is not None:
            boxes[side] = box
    return Rendering(image=image.astype(np.float32), implant_mask=mask, boxes=boxes)
