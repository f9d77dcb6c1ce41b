"""A projection canvas: analytic path lengths of simple solids, accumulated per material.

Coordinates are millimetres in the patient's coronal plane as seen on an AP radiograph: x to the
image right (the patient's left), y downwards. The canvas maps every pixel centre to those
coordinates through the image pose (pixel spacing, rotation, view centre), so solids are
described once in millimetres and rendered at any resolution. Each primitive returns the length
(mm) a ray travels through it, which makes cortical bone, the metal shell and soft tissue look
like projections rather than flat shapes.
"""

from __future__ import annotations

import math

import numpy as np

# "titanium" (cup shell, stem) and "cocr" (cobalt-chrome head) are the implant alloys; "metal"
# is a generic implant metal kept for callers that draw a single one.
MATERIALS = ("soft", "bone", "metal", "titanium", "cocr")


class Canvas:
    def __init__(self, width: int, height: int, spacing_mm: float, rotation_deg: float,
                 view_centre_mm: tuple[float, float]):
        self.width, self.height, self.spacing = width, height, spacing_mm
        theta = math.radians(rotation_deg)
        self._cos, self._sin = math.cos(theta), math.sin(theta)
        self._centre = view_centre_mm
        cols = (np.arange(width, dtype=np.float32) + 0.5 - width / 2) * spacing_mm
        rows = (np.arange(height, dtype=np.float32) + 0.5 - height / 2) * spacing_mm
        u, v = np.meshgrid(cols, rows)
        self.x = view_centre_mm[0] + self._cos * u - self._sin * v
        self.y = view_centre_mm[1] + self._sin * u + self._cos * v
        self.layers = {m: np.zeros((height, width), np.float32) for m in MATERIALS}
        self.masks: dict[str, np.ndarray] = {}
        self.drawn: set[str] = set()  # materials something was added to

    # -- geometry -------------------------------------------------------------------------
    def to_pixel(self, x: float, y: float) -> tuple[float, float]:
        """Continuous pixel coordinates (col, row) of a point given in millimetres."""
        dx, dy = x - self._centre[0], y - self._centre[1]
        u = self._cos * dx + self._sin * dy
        v = -self._sin * dx + self._cos * dy
        return u / self.spacing + self.width / 2, v / self.spacing + self.height / 2

    def _window(self, centre: tuple[float, float], radius_mm: float):
        col, row = self.to_pixel(*centre)
        r = radius_mm / self.spacing + 2
        c0, c1 = max(0, int(col - r)), min(self.width, int(col + r) + 1)
        r0, r1 = max(0, int(row - r)), min(self.height, int(row + r) + 1)
        if c0 >= c1 or r0 >= r1:
            return None
        return np.s_[r0:r1, c0:c1]

    def add(self, material: str, centre: tuple[float, float], radius_mm: float, path_fn,
            name: str | None = None, combine: str = "sum") -> None:
        """Add ``path_fn(x, y)`` (mm of material) inside a disc of ``radius_mm`` around centre.

        ``combine='max'`` overlays instead of adding (soft-tissue envelopes that overlap).
        ``name`` keeps the footprint (path > 0) as a mask, used for annotation boxes and masks.
        """
        win = self._window(centre, radius_mm)
        if name is not None:
            self.masks.setdefault(name, np.zeros((self.height, self.width), bool))
        if win is None:
            return
        path = path_fn(self.x[win], self.y[win]).astype(np.float32)
        layer = self.layers[material]
        self.drawn.add(material)
        if combine == "max":
            np.maximum(layer[win], path, out=layer[win])
        else:
            layer[win] += path
        if name is not None:
            self.masks[name][win] |= path > 0


# -- solids (each returns a function of (x, y) giving path length in mm) ----------------------

def _local(x, y, cx, cy, angle_deg):
    a = math.radians(angle_deg)
    dx, dy = x - cx, y - cy
    return dx * math.cos(a) + dy * math.sin(a), -dx * math.sin(a) + dy * math.cos(a)


def ellipsoid(cx, cy, a, b, depth, angle_deg=0.0):
    """Ellipsoid with semi-axes a, b in plane and full thickness ``depth`` at its centre."""
    def path(x, y):
        u, v = _local(x, y, cx, cy, angle_deg)
        return depth * np.sqrt(np.clip(1.0 - (u / a) ** 2 - (v / b) ** 2, 0.0, None))
    return path


def sphere(cx, cy, r, inner_r=0.0, inner_fill=0.0):
    """Sphere of radius r; with ``inner_r``, a shell whose core has density ``inner_fill``."""
    def path(x, y):
        d2 = (x - cx) ** 2 + (y - cy) ** 2
        out = 2 * np.sqrt(np.clip(r * r - d2, 0.0, None))
        if inner_r > 0:
            out = out - (1.0 - inner_fill) * 2 * np.sqrt(np.clip(inner_r**2 - d2, 0.0, None))
        return out
    return path


def tube(p0, p1, r0, r1=None, inner_ratio=0.0, inner_fill=0.0):
    """Round tube from p0 to p1 (radius r0 -> r1, rounded ends), optionally hollow."""
    r1 = r0 if r1 is None else r1
    (x0, y0), (x1, y1) = p0, p1
    dx, dy = x1 - x0, y1 - y0
    length2 = dx * dx + dy * dy or 1e-9

    def path(x, y):
        t = np.clip(((x - x0) * dx + (y - y0) * dy) / length2, 0.0, 1.0)
        d2 = (x - x0 - t * dx) ** 2 + (y - y0 - t * dy) ** 2
        r = r0 + t * (r1 - r0)
        out = 2 * np.sqrt(np.clip(r * r - d2, 0.0, None))
        if inner_ratio > 0:
            ri = inner_ratio * r
            out = out - (1.0 - inner_fill) * 2 * np.sqrt(np.clip(ri * ri - d2, 0.0, None))
        return out
    return path


def elliptic_ring(cx, cy, a, b, tube_r, angle_deg=0.0, upper_only=False):
    """A tube of radius ``tube_r`` bent along an ellipse (pelvic brim, obturator ring).

    ``upper_only`` keeps the half above the ellipse's major axis (an iliac crest).
    """
    scale = math.sqrt(a * b)

    def path(x, y):
        u, v = _local(x, y, cx, cy, angle_deg)
        d = (np.sqrt((u / a) ** 2 + (v / b) ** 2) - 1.0) * scale
        out = 2 * np.sqrt(np.clip(tube_r * tube_r - d * d, 0.0, None))
        return np.where(v < 0, out, out * np.clip(1.0 - v / (0.3 * b), 0.0, 1.0)) if upper_only \
            else out
    return path


def hemispherical_shell(cx, cy, outer_r, inner_r, rim_axis, dome_axis, anteversion_deg):
    """Projected path length through an acetabular cup (a hemispherical metal shell).

    ``rim_axis`` is the unit in-plane direction of the rim's long axis (its angle to the
    horizontal is the radiographic inclination); ``dome_axis`` the in-plane unit normal towards
    the dome. The opening plane is tilted out of the image plane by the anteversion, so the rim
    projects as an ellipse whose minor/major ratio is sin(anteversion).
    """
    av = math.radians(max(anteversion_deg, 0.5))
    sin_av, cos_av = math.sin(av), math.cos(av)
    ru, rv = rim_axis
    du, dv = dome_axis

    def chord(z_half, z_min):
        # length of {z : |z| <= z_half, z >= z_min}
        return np.clip(z_half - np.maximum(-z_half, z_min), 0.0, None)

    def path(x, y):
        px, py = x - cx, y - cy
        u = px * ru + py * rv
        v = px * du + py * dv
        rho2 = u * u + v * v
        # Points p = (u, v, z) of the shell with p . n >= 0, n = (0, cos av, sin av).
        z_min = -v * cos_av / sin_av
        zo = np.sqrt(np.clip(outer_r**2 - rho2, 0.0, None))
        zi = np.sqrt(np.clip(inner_r**2 - rho2, 0.0, None))
        return chord(zo, z_min) - chord(zi, z_min)
    return path
