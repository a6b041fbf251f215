"""Shape templates of the synthetic classes: primitives, groups with named parts, landmarks.

Object-frame coordinates: the object fits in the unit circle, y points down. The templates are
packed once into flat arrays (:data:`_T`) that the Numba rasterizer reads.
"""
from __future__ import annotations

import math

import numpy as np

from ...errors import UserError

ELLIPSE, BOX, TRIANGLE, CAPSULE, RING, HALF_ELLIPSE, POLYGON = 0, 1, 2, 3, 4, 5, 6
BODY, DETAIL, ACCENT = 0, 1, 2          # colour slots of a sample's palette
_NPRM = 8                                # parameters per primitive


def _ellipse(cx, cy, rx, ry, rot=0.0):
    return (ELLIPSE, cx, cy, rx, ry, math.cos(rot), math.sin(rot))


def _disk(cx, cy, r):
    return _ellipse(cx, cy, r, r)


def _box(cx, cy, hw, hh, rot=0.0):
    return (BOX, cx, cy, hw, hh, math.cos(rot), math.sin(rot))


def _tri(x0, y0, x1, y1, x2, y2):
    return (TRIANGLE, x0, y0, x1, y1, x2, y2)


def _capsule(x0, y0, x1, y1, r):
    return (CAPSULE, x0, y0, x1, y1, r)


def _ring(cx, cy, r_out, r_in):
    return (RING, cx, cy, r_out, r_in)


def _half_ellipse(cx, cy, rx, ry):
    """Upper half (v <= cy) of an axis-aligned ellipse."""
    return (HALF_ELLIPSE, cx, cy, rx, ry)


def _polygon(*xy):
    """Simple polygon (convex or not) from x0, y0, x1, y1, ...; stored in a shared vertex table."""
    return (POLYGON, tuple(zip(xy[0::2], xy[1::2])))


def _star_groups():
    tips, inner = [], []
    for k in range(5):
        a = -math.pi / 2 + k * 2 * math.pi / 5
        tips.append((0.95 * math.cos(a), 0.95 * math.sin(a)))
        b = a + math.pi / 5
        inner.append((0.4 * math.cos(b), 0.4 * math.sin(b)))
    outline = []
    for k in range(5):
        outline += [tips[k][0], tips[k][1], inner[k][0], inner[k][1]]
    prims = [_polygon(*outline)]
    lm = {}
    names = ("top_tip", "right_tip", "lower_right_tip", "lower_left_tip", "left_tip")
    for name, (x, y) in zip(names, tips):
        lm[name] = (0.72 * x, 0.72 * y, 0.2)
    lm["centre"] = (0.0, 0.0, 0.2)
    groups = [(None, BODY, prims), ("centre", DETAIL, [_disk(0.0, 0.0, 0.17)])]
    return groups, lm


def _flower_groups():
    hy = -0.3
    petals = []
    for k in range(6):
        a = -math.pi / 2 + k * math.pi / 3
        petals.append(_ellipse(0.3 * math.cos(a), hy + 0.3 * math.sin(a), 0.23, 0.12, a))
    groups = [
        ("stem", ACCENT, [_capsule(0.0, 0.1, 0.0, 0.9, 0.06)]),
        ("leaf", ACCENT, [_ellipse(0.22, 0.6, 0.2, 0.075, -0.5)]),
        (None, BODY, petals),
        ("centre", DETAIL, [_disk(0.0, hy, 0.15)]),
    ]
    lm = {"centre": (0.0, hy, 0.18), "top_petal": (0.0, hy - 0.32, 0.16),
          "stem": (0.0, 0.35, 0.14), "leaf": (0.22, 0.6, 0.18)}
    return groups, lm


# Each class: list of groups (part name or None for the body, colour slot, primitives) and the
# landmarks {part: (u, v, radius)} in object units. Groups are painted in order.
def _face_groups():
    groups = [
        (None, BODY, [_ellipse(0.0, 0.0, 0.8, 0.95)]),
        ("left_eye", DETAIL, [_ellipse(-0.32, -0.25, 0.16, 0.13)]),
        ("right_eye", DETAIL, [_ellipse(0.32, -0.25, 0.16, 0.13)]),
        ("nose", ACCENT, [_tri(0.0, -0.12, -0.13, 0.2, 0.13, 0.2)]),
        ("mouth", DETAIL, [_capsule(-0.32, 0.5, 0.32, 0.5, 0.08)]),
    ]
    lm = {"left_eye": (-0.32, -0.25, 0.2), "right_eye": (0.32, -0.25, 0.2),
          "nose": (0.0, 0.08, 0.18), "mouth": (0.0, 0.5, 0.4)}
    return groups, lm


def _house_groups():
    groups = [
        ("chimney", ACCENT, [_box(0.45, -0.55, 0.08, 0.2)]),
        ("roof", ACCENT, [_tri(-0.8, -0.12, 0.8, -0.12, 0.0, -0.86)]),
        (None, BODY, [_box(0.0, 0.3, 0.6, 0.45)]),
        ("door", DETAIL, [_box(0.22, 0.5, 0.15, 0.25)]),
        ("window", DETAIL, [_box(-0.28, 0.2, 0.16, 0.14)]),
    ]
    lm = {"roof": (0.0, -0.4, 0.32), "chimney": (0.45, -0.62, 0.16),
          "door": (0.22, 0.5, 0.26), "window": (-0.28, 0.2, 0.2)}
    return groups, lm


def _car_groups():
    groups = [
        (None, BODY, [_polygon(-0.9, -0.12, -0.62, -0.12, -0.36, -0.43, 0.36, -0.43, 0.62, -0.12,
                               0.9, -0.12, 0.9, 0.32, -0.9, 0.32)]),
        ("windows", ACCENT, [_box(-0.17, -0.24, 0.14, 0.1), _box(0.17, -0.24, 0.14, 0.1)]),
        ("left_wheel", DETAIL, [_disk(-0.55, 0.38, 0.23)]),
        ("right_wheel", DETAIL, [_disk(0.55, 0.38, 0.23)]),
        ("left_wheel", ACCENT, [_disk(-0.55, 0.38, 0.08)]),
        ("right_wheel", ACCENT, [_disk(0.55, 0.38, 0.08)]),
    ]
    lm = {"left_wheel": (-0.55, 0.38, 0.26), "right_wheel": (0.55, 0.38, 0.26),
          "windows": (0.0, -0.24, 0.34)}
    return groups, lm


def _cross_groups():
    groups = [
        (None, BODY, [_box(0.0, 0.0, 0.62, 0.14), _box(0.0, 0.0, 0.14, 0.62)]),
        ("top_cap", DETAIL, [_disk(0.0, -0.74, 0.2)]),
        ("bottom_cap", DETAIL, [_disk(0.0, 0.74, 0.2)]),
        ("left_cap", DETAIL, [_disk(-0.74, 0.0, 0.2)]),
        ("right_cap", DETAIL, [_disk(0.74, 0.0, 0.2)]),
    ]
    lm = {"top_cap": (0.0, -0.74, 0.23), "bottom_cap": (0.0, 0.74, 0.23),
          "left_cap": (-0.74, 0.0, 0.23), "right_cap": (0.74, 0.0, 0.23),
          "centre": (0.0, 0.0, 0.2)}
    return groups, lm


def _ring_groups():
    groups = [
        (None, BODY, [_ring(0.0, 0.12, 0.75, 0.48)]),
        ("setting", ACCENT, [_box(0.0, -0.62, 0.16, 0.07)]),
        ("gem", DETAIL, [_polygon(-0.2, -0.89, 0.2, -0.89, 0.2, -0.76, 0.0, -0.5, -0.2, -0.76)]),
    ]
    lm = {"gem": (0.0, -0.75, 0.2), "hole": (0.0, 0.12, 0.45), "band_bottom": (0.0, 0.74, 0.16)}
    return groups, lm


def _arrow_groups():
    groups = [
        (None, BODY, [_box(-0.12, 0.0, 0.6, 0.08), _tri(0.95, 0.0, 0.38, -0.36, 0.38, 0.36)]),
        ("tail", ACCENT, [_tri(-0.42, -0.03, -0.8, -0.03, -0.93, -0.3),
                          _tri(-0.42, 0.03, -0.8, 0.03, -0.93, 0.3)]),
    ]
    lm = {"head": (0.6, 0.0, 0.3), "tail": (-0.7, 0.0, 0.28), "shaft": (-0.05, 0.0, 0.15)}
    return groups, lm


def _tree_groups():
    groups = [
        ("trunk", ACCENT, [_box(0.0, 0.72, 0.12, 0.2)]),
        (None, BODY, [_tri(0.0, -0.95, -0.4, -0.38, 0.4, -0.38),
                      _tri(0.0, -0.66, -0.56, 0.04, 0.56, 0.04),
                      _tri(0.0, -0.36, -0.7, 0.56, 0.7, 0.56)]),
        ("baubles", DETAIL, [_disk(-0.22, 0.28, 0.08), _disk(0.2, -0.16, 0.08),
                             _disk(0.3, 0.38, 0.08)]),
    ]
    lm = {"top": (0.0, -0.7, 0.2), "trunk": (0.0, 0.72, 0.22), "canopy": (0.0, 0.05, 0.45)}
    return groups, lm


def _mushroom_groups():
    groups = [
        ("stem", ACCENT, [_box(0.0, 0.45, 0.22, 0.42)]),
        (None, BODY, [_half_ellipse(0.0, 0.05, 0.9, 0.75)]),
        ("left_spot", DETAIL, [_disk(-0.45, -0.18, 0.12)]),
        ("top_spot", DETAIL, [_disk(0.05, -0.45, 0.13)]),
        ("right_spot", DETAIL, [_disk(0.48, -0.12, 0.1)]),
    ]
    lm = {"cap": (0.0, -0.3, 0.35), "stem": (0.0, 0.5, 0.22), "left_spot": (-0.45, -0.18, 0.15),
          "top_spot": (0.05, -0.45, 0.16), "right_spot": (0.48, -0.12, 0.13)}
    return groups, lm


#: class name -> template builder, in label order
_BUILDERS = (
    ("face", _face_groups), ("house", _house_groups), ("car", _car_groups), ("flower", _flower_groups),
    ("star", _star_groups), ("cross", _cross_groups), ("ring", _ring_groups), ("arrow", _arrow_groups),
    ("tree", _tree_groups), ("mushroom", _mushroom_groups),
)


def _templates():
    """``{class name: (groups, landmarks)}`` of every class, in label order."""
    return {name: build() for name, build in _BUILDERS}


_TEMPLATES = _templates()
#: every class of the synthetic dataset, in label order (label = index in this tuple)
CLASS_NAMES = tuple(_TEMPLATES)


def _prim_bound(p):
    """Bounding circle (cx, cy, r) of a primitive and its farthest distance from the origin."""
    kind = p[0]
    if kind in (ELLIPSE, HALF_ELLIPSE):
        cx, cy, r = p[1], p[2], max(p[3], p[4])
    elif kind == BOX:
        cx, cy, r = p[1], p[2], math.hypot(p[3], p[4])
    elif kind == RING:
        cx, cy, r = p[1], p[2], p[3]
    elif kind == CAPSULE:
        cx, cy = (p[1] + p[3]) / 2, (p[2] + p[4]) / 2
        r = math.hypot(p[3] - p[1], p[4] - p[2]) / 2 + p[5]
    elif kind == TRIANGLE:
        xs, ys = p[1:7:2], p[2:7:2]
        cx, cy = sum(xs) / 3, sum(ys) / 3
        r = max(math.hypot(x - cx, y - cy) for x, y in zip(xs, ys))
    elif kind == POLYGON:
        xs, ys = [v[0] for v in p[1]], [v[1] for v in p[1]]
        cx, cy = (min(xs) + max(xs)) / 2, (min(ys) + max(ys)) / 2
        r = max(math.hypot(x - cx, y - cy) for x, y in zip(xs, ys))
    else:  # pragma: no cover
        raise ValueError(kind)
    # the farthest point from the origin (tight for polygons, safe otherwise)
    if kind == TRIANGLE:
        far = max(math.hypot(x, y) for x, y in zip(p[1:7:2], p[2:7:2]))
    elif kind == POLYGON:
        far = max(math.hypot(x, y) for x, y in p[1])
    elif kind == BOX:
        c, s = p[5], p[6]
        far = max(math.hypot(p[1] + c * sx * p[3] - s * sy * p[4], p[2] + s * sx * p[3] + c * sy * p[4])
                  for sx in (-1, 1) for sy in (-1, 1))
    elif kind == CAPSULE:
        far = max(math.hypot(p[1], p[2]), math.hypot(p[3], p[4])) + p[5]
    else:
        far = math.hypot(cx, cy) + r
    return (cx, cy, r), far


def _pack_templates():
    prims, bounds, gstart, gslot, gpart, cls_g0, cls_radius = [], [], [0], [], [], [0], []
    verts = []
    part_names, landmarks = [], []
    for name in CLASS_NAMES:
        groups, lm = _TEMPLATES[name]
        names = list(lm)
        for part, _slot, _ in groups:
            if part is not None and part not in names:
                names.append(part)
        far_max = 0.0
        for part, slot, plist in groups:
            for p in plist:
                row = np.zeros(_NPRM, np.float64)
                row[0] = p[0]
                if p[0] == POLYGON:
                    row[1], row[2] = len(verts), len(p[1])
                    verts.extend(p[1])
                else:
                    row[1:len(p)] = p[1:]
                prims.append(row)
                b, far = _prim_bound(p)
                bounds.append(b)
                far_max = max(far_max, far)
            gstart.append(len(prims))
            gslot.append(slot)
            gpart.append(-1 if part is None else names.index(part))
        cls_g0.append(len(gslot))
        if far_max > 1.0 + 1e-6:
            raise AssertionError(f"template {name} leaves the unit circle ({far_max:.3f})")
        cls_radius.append(far_max)
        part_names.append(tuple(names))
        rows = []
        for part in names:
            if part in lm:
                rows.append(lm[part])
            else:  # a part without an explicit landmark: centre of its bounding circles
                rows.append(_part_centroid(groups, part))
        landmarks.append(np.array(rows, np.float64))
    return dict(
        prims=np.array(prims, np.float64), bounds=np.array(bounds, np.float64),
        verts=np.array(verts, np.float64).reshape(-1, 2),
        gstart=np.array(gstart, np.int64), gslot=np.array(gslot, np.int64),
        gpart=np.array(gpart, np.int64), cls_g0=np.array(cls_g0, np.int64),
        cls_radius=np.array(cls_radius, np.float64), part_names=part_names, landmarks=landmarks,
    )


def _part_centroid(groups, part):
    pts = []
    for name, _slot, plist in groups:
        if name == part:
            for p in plist:
                (cx, cy, r), _ = _prim_bound(p)
                pts.append((cx, cy, r))
    a = np.array(pts)
    cx, cy = a[:, 0].mean(), a[:, 1].mean()
    r = max(math.hypot(x - cx, y - cy) + rr for x, y, rr in pts)
    return (cx, cy, r)


_T = _pack_templates()


def class_parts(name_or_label):
    """Part names of a class (by name or label in :data:`CLASS_NAMES`)."""
    c = _class_index(name_or_label)
    return list(_T["part_names"][c])


def _class_index(name_or_label):
    if isinstance(name_or_label, (int, np.integer)):
        if not 0 <= int(name_or_label) < len(CLASS_NAMES):
            raise UserError(f"synthetic class label {name_or_label} out of range 0..{len(CLASS_NAMES) - 1}")
        return int(name_or_label)
    if name_or_label not in CLASS_NAMES:
        raise UserError(f"unknown synthetic class {name_or_label!r}; expected one of {', '.join(CLASS_NAMES)}")
    return CLASS_NAMES.index(name_or_label)

