"""The rasterizer: signed distances of the primitives (object units) and the anti-aliased painter."""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .shapes import BOX, CAPSULE, ELLIPSE, HALF_ELLIPSE, POLYGON, RING, TRIANGLE
from .style import _paint_background


@njit(cache=True)
def _clamp01(t):
    return 0.0 if t < 0.0 else (1.0 if t > 1.0 else t)


@njit(cache=True)
def _seg_dist2(wx, wy, ex, ey):
    """Squared distance from ``w`` to the segment ``0 .. e`` (``w`` relative to the segment's start)."""
    h = _clamp01((wx * ex + wy * ey) / (ex * ex + ey * ey))
    bx, by = wx - ex * h, wy - ey * h
    return bx * bx + by * by


@njit(cache=True)
def _sdf_polygon(p, verts, u, v):
    """Simple polygon (vertices ``verts[p[1] : p[1] + p[2]]``): distance to the edges, sign by crossings."""
    o, n = int(p[1]), int(p[2])
    dx, dy = u - verts[o, 0], v - verts[o, 1]
    dd = dx * dx + dy * dy
    sg = 1.0
    j = o + n - 1
    for i in range(o, o + n):
        ex, ey = verts[j, 0] - verts[i, 0], verts[j, 1] - verts[i, 1]
        wx, wy = u - verts[i, 0], v - verts[i, 1]
        t = _seg_dist2(wx, wy, ex, ey)
        if t < dd:
            dd = t
        c1 = v >= verts[i, 1]
        c2 = v < verts[j, 1]
        c3 = ex * wy > ey * wx
        if (c1 and c2 and c3) or ((not c1) and (not c2) and (not c3)):
            sg = -sg
        j = i
    return sg * math.sqrt(dd)


@njit(cache=True)
def _sdf_ellipse(p, u, v, half):
    """Ellipse (rotated by ``p[5:7]`` = cos, sin) or, with ``half``, the upper half of an upright one."""
    x = u - p[1]
    y = v - p[2]
    if not half:
        c, s = p[5], p[6]
        x, y = c * x + s * y, -s * x + c * y
    rx, ry = p[3], p[4]
    k0 = math.sqrt((x / rx) ** 2 + (y / ry) ** 2)
    k1 = math.sqrt((x / (rx * rx)) ** 2 + (y / (ry * ry)) ** 2)
    if k1 < 1e-12:
        d = -min(rx, ry)
    else:
        d = k0 * (k0 - 1.0) / k1
    if half and y > d:
        d = y
    return d


@njit(cache=True)
def _sdf_box(p, u, v):
    """Rotated box: centre ``p[1:3]``, half sides ``p[3:5]``, rotation cos, sin ``p[5:7]``."""
    x = u - p[1]
    y = v - p[2]
    c, s = p[5], p[6]
    x, y = abs(c * x + s * y) - p[3], abs(-s * x + c * y) - p[4]
    ox = x if x > 0.0 else 0.0
    oy = y if y > 0.0 else 0.0
    inside = max(x, y)
    return math.sqrt(ox * ox + oy * oy) + (inside if inside < 0.0 else 0.0)


@njit(cache=True)
def _tri_edge(u, v, ax, ay, bx, by, sg):
    """One triangle edge ``a -> b``: (squared distance from ``(u, v)`` to it, signed side of ``(u, v)``,
    positive on the inner side for winding sign ``sg``)."""
    ex, ey = bx - ax, by - ay
    wx, wy = u - ax, v - ay
    return _seg_dist2(wx, wy, ex, ey), sg * (wx * ey - wy * ex)


@njit(cache=True)
def _sdf_triangle(p, u, v):
    """Triangle with vertices ``p[1:7]`` (either winding): distance to the nearest edge, negative when
    ``(u, v)`` is on the inner side of all three."""
    x0, y0, x1, y1, x2, y2 = p[1], p[2], p[3], p[4], p[5], p[6]
    sg = 1.0 if (x1 - x0) * (y0 - y2) - (y1 - y0) * (x0 - x2) > 0.0 else -1.0
    dd, ss = _tri_edge(u, v, x0, y0, x1, y1, sg)
    t, s = _tri_edge(u, v, x1, y1, x2, y2, sg)
    if t < dd:
        dd = t
    if s < ss:
        ss = s
    t, s = _tri_edge(u, v, x2, y2, x0, y0, sg)
    if t < dd:
        dd = t
    if s < ss:
        ss = s
    d = math.sqrt(dd)
    return -d if ss > 0.0 else d


@njit(cache=True)
def _sdf_capsule(p, u, v):
    """Segment ``p[1:3] .. p[3:5]`` thickened by radius ``p[5]``."""
    return math.sqrt(_seg_dist2(u - p[1], v - p[2], p[3] - p[1], p[4] - p[2])) - p[5]


@njit(cache=True)
def _sdf_ring(p, u, v):
    """Annulus: centre ``p[1:3]``, outer radius ``p[3]``, inner radius ``p[4]``."""
    r = math.sqrt((u - p[1]) ** 2 + (v - p[2]) ** 2)
    return max(r - p[3], p[4] - r)


@njit(cache=True)
def _sdf(p, verts, u, v):
    """Signed distance (negative inside) from ``(u, v)`` to primitive row ``p`` (object units)."""
    kind = int(p[0])
    if kind == POLYGON:
        return _sdf_polygon(p, verts, u, v)
    if kind == ELLIPSE or kind == HALF_ELLIPSE:
        return _sdf_ellipse(p, u, v, kind == HALF_ELLIPSE)
    if kind == BOX:
        return _sdf_box(p, u, v)
    if kind == TRIANGLE:
        return _sdf_triangle(p, u, v)
    if kind == CAPSULE:
        return _sdf_capsule(p, u, v)
    if kind == RING:
        return _sdf_ring(p, u, v)
    return 1e9


@njit(cache=True)
def _draw_object(img, mask, prims, verts, bounds, gstart, gslot, gpart, g0, g1, palette,
                 cx, cy, R, angle, part_filter, paint):
    """Paint groups g0..g1 at pose (cx, cy, R px, angle rad); accumulate coverage in mask.

    part_filter >= 0: only groups of that part (mask only, when paint is False).
    """
    H, W = mask.shape[0], mask.shape[1]
    ca, sa = math.cos(angle), math.sin(angle)
    inv = 1.0 / R
    pad = 1.5 * inv
    for g in range(g0, g1):
        if part_filter >= 0 and gpart[g] != part_filter:
            continue
        s0, s1 = gstart[g], gstart[g + 1]
        xmin, ymin, xmax, ymax = 1e9, 1e9, -1e9, -1e9
        for k in range(s0, s1):
            bx, by, br = bounds[k, 0], bounds[k, 1], bounds[k, 2]
            sx = cx + R * (ca * bx - sa * by)
            sy = cy + R * (sa * bx + ca * by)
            rr = R * br + 1.5
            xmin = min(xmin, sx - rr)
            xmax = max(xmax, sx + rr)
            ymin = min(ymin, sy - rr)
            ymax = max(ymax, sy + rr)
        x0 = max(0, int(math.floor(xmin)))
        x1 = min(W, int(math.ceil(xmax)) + 1)
        y0 = max(0, int(math.floor(ymin)))
        y1 = min(H, int(math.ceil(ymax)) + 1)
        slot = gslot[g]
        cr, cg, cb = palette[slot, 0], palette[slot, 1], palette[slot, 2]
        for y in range(y0, y1):
            py = y + 0.5 - cy
            for x in range(x0, x1):
                px = x + 0.5 - cx
                u = (ca * px + sa * py) * inv
                v = (-sa * px + ca * py) * inv
                d = 1e9
                for k in range(s0, s1):
                    du = u - bounds[k, 0]
                    dv = v - bounds[k, 1]
                    rr = bounds[k, 2] + pad
                    if du * du + dv * dv > rr * rr:
                        continue
                    dk = _sdf(prims[k], verts, u, v)
                    if dk < d:
                        d = dk
                a = 0.5 - d * R
                if a <= 0.0:
                    continue
                if a > 1.0:
                    a = 1.0
                if paint:
                    img[y, x, 0] += (cr - img[y, x, 0]) * a
                    img[y, x, 1] += (cg - img[y, x, 1]) * a
                    img[y, x, 2] += (cb - img[y, x, 2]) * a
                if a > mask[y, x]:
                    mask[y, x] = a


@njit(cache=True)
def _render_batch(out, masks_out, bbox_out, labels, poses, palettes, bgs,
                  prims, verts, bounds, gstart, gslot, gpart, cls_g0):
    """Render B images into out (B,H,W,3) uint8; poses rows (cx, cy, R, angle_rad)."""
    B, H, W = out.shape[0], out.shape[1], out.shape[2]
    img = np.empty((H, W, 3), np.float64)
    mask = np.empty((H, W), np.float64)
    for i in range(B):
        _paint_background(img, bgs[i])
        mask[:, :] = 0.0
        c = labels[i]
        _draw_object(img, mask, prims, verts, bounds, gstart, gslot, gpart, cls_g0[c], cls_g0[c + 1],
                     palettes[i], poses[i, 0], poses[i, 1], poses[i, 2], poses[i, 3], -1, True)
        x0, y0, x1, y1 = W, H, 0, 0
        for y in range(H):
            for x in range(W):
                for ch in range(3):
                    t = img[y, x, ch] * 255.0 + 0.5
                    out[i, y, x, ch] = 0 if t < 0.0 else (255 if t >= 255.0 else np.uint8(t))
                if mask[y, x] >= 0.5:
                    x0 = min(x0, x)
                    x1 = max(x1, x + 1)
                    y0 = min(y0, y)
                    y1 = max(y1, y + 1)
                if masks_out.shape[0] > 0:
                    masks_out[i, y, x] = mask[y, x]
        if x1 <= x0:
            x0, y0, x1, y1 = 0, 0, 0, 0
        bbox_out[i, 0] = x0
        bbox_out[i, 1] = y0
        bbox_out[i, 2] = x1
        bbox_out[i, 3] = y1


@njit(cache=True)
def _part_coverage(mask, prims, verts, bounds, gstart, gslot, gpart, g0, g1, cx, cy, R, angle, part):
    palette = np.zeros((3, 3))
    img = np.zeros((1, 1, 3))
    _draw_object(img, mask, prims, verts, bounds, gstart, gslot, gpart, g0, g1, palette,
                 cx, cy, R, angle, part, False)
