"""Colours and backgrounds: HSV palettes, the background parameter rows and their painter."""
from __future__ import annotations

import math

import numpy as np
from numba import njit

from .rng import _uniform


@njit(cache=True)
def _hsv(h, s, v, out):
    h = (h % 1.0) * 6.0
    i = int(h)
    f = h - i
    p = v * (1.0 - s)
    q = v * (1.0 - s * f)
    t = v * (1.0 - s * (1.0 - f))
    if i == 0:
        r, g, b = v, t, p
    elif i == 1:
        r, g, b = q, v, p
    elif i == 2:
        r, g, b = p, v, t
    elif i == 3:
        r, g, b = p, q, v
    elif i == 4:
        r, g, b = t, p, v
    else:
        r, g, b = v, p, q
    out[0] = r
    out[1] = g
    out[2] = b


@njit(cache=True)
def _lum(c):
    return 0.299 * c[0] + 0.587 * c[1] + 0.114 * c[2]


# background parameter layout (one float64 row per image)
_BG_MODE, _BG_C0, _BG_C1, _BG_GRAD = 0, 1, 4, 7        # mode; colours; gradient cos, sin, offset
_BG_STRIPE = 10                                        # amp, freq, cos, sin, phase, r, g, b
_BG_NBLOB = 18
_BG_BLOB = 19                                          # x, y, r, alpha, r, g, b  per blob
_MAX_BLOBS = 6
_NBG = _BG_BLOB + 7 * _MAX_BLOBS


@njit(cache=True)
def _gen_palette(key, idx, k0, hue, out):
    """Body, detail and accent colours. hue < 0: random hue. Returns next counter."""
    k = k0
    h = _uniform(key, idx, k) if hue < 0 else hue
    s = 0.45 + 0.55 * _uniform(key, idx, k + 1)
    v = 0.4 + 0.6 * _uniform(key, idx, k + 2)
    _hsv(h, s, v, out[0])
    # detail: contrasting luminance
    hd = h + 0.25 + 0.5 * _uniform(key, idx, k + 3)
    sd = 0.3 + 0.7 * _uniform(key, idx, k + 4)
    if _lum(out[0]) > 0.45:
        vd = 0.05 + 0.3 * _uniform(key, idx, k + 5)
    else:
        vd = 0.8 + 0.2 * _uniform(key, idx, k + 5)
    _hsv(hd, sd, vd, out[1])
    # accent: another hue, mid-to-high saturation
    ha = h + 0.15 + 0.7 * _uniform(key, idx, k + 6)
    sa = 0.5 + 0.5 * _uniform(key, idx, k + 7)
    va = 0.3 + 0.7 * _uniform(key, idx, k + 8)
    _hsv(ha, sa, va, out[2])
    # keep the accent distinguishable from the body
    if abs(_lum(out[2]) - _lum(out[0])) < 0.12:
        if _lum(out[0]) > 0.5:
            va = va * 0.45
        else:
            va = min(1.0, va + 0.45)
        _hsv(ha, sa, va, out[2])
    return k + 9


@njit(cache=True)
def _gen_background(key, idx, k0, colored, body_lum, size, out):
    k = k0
    for j in range(out.shape[0]):
        out[j] = 0.0
    c = np.empty(3)
    if not colored:
        # plain grey, at least 0.3 away from the body's luminance
        lo = max(0.0, body_lum - 0.3)
        hi = min(1.0, body_lum + 0.3)
        total = lo + (1.0 - hi)
        t = _uniform(key, idx, k) * total
        g = t if t < lo else hi + (t - lo)
        out[_BG_MODE] = 0.0
        out[_BG_C0] = g
        out[_BG_C0 + 1] = g
        out[_BG_C0 + 2] = g
        return k + 1
    out[_BG_MODE] = 1.0
    _hsv(_uniform(key, idx, k), 0.15 + 0.8 * _uniform(key, idx, k + 1),
         0.15 + 0.85 * _uniform(key, idx, k + 2), c)
    out[_BG_C0:_BG_C0 + 3] = c
    _hsv(_uniform(key, idx, k + 3), 0.15 + 0.8 * _uniform(key, idx, k + 4),
         0.15 + 0.85 * _uniform(key, idx, k + 5), c)
    out[_BG_C1:_BG_C1 + 3] = c
    a = 2.0 * math.pi * _uniform(key, idx, k + 6)
    out[_BG_GRAD] = math.cos(a) / size
    out[_BG_GRAD + 1] = math.sin(a) / size
    out[_BG_GRAD + 2] = 0.5 - 0.5 * (math.cos(a) + math.sin(a))   # t = 0.5 at the centre
    k += 7
    if _uniform(key, idx, k) < 0.5:
        out[_BG_STRIPE] = 0.15 + 0.35 * _uniform(key, idx, k + 1)          # amplitude
        out[_BG_STRIPE + 1] = (2.0 + 6.0 * _uniform(key, idx, k + 2)) / size  # cycles per pixel
        a = math.pi * _uniform(key, idx, k + 3)
        out[_BG_STRIPE + 2] = math.cos(a)
        out[_BG_STRIPE + 3] = math.sin(a)
        out[_BG_STRIPE + 4] = 2.0 * math.pi * _uniform(key, idx, k + 4)
        _hsv(_uniform(key, idx, k + 5), 0.3 + 0.7 * _uniform(key, idx, k + 6),
             0.2 + 0.8 * _uniform(key, idx, k + 7), c)
        out[_BG_STRIPE + 5:_BG_STRIPE + 8] = c
    k += 8
    nb = 2 + int(_uniform(key, idx, k) * (_MAX_BLOBS - 1))
    if nb > _MAX_BLOBS:
        nb = _MAX_BLOBS
    out[_BG_NBLOB] = nb
    k += 1
    for j in range(nb):
        o = _BG_BLOB + 7 * j
        out[o] = size * (-0.1 + 1.2 * _uniform(key, idx, k))
        out[o + 1] = size * (-0.1 + 1.2 * _uniform(key, idx, k + 1))
        out[o + 2] = size * (0.1 + 0.35 * _uniform(key, idx, k + 2))
        out[o + 3] = 0.4 + 0.5 * _uniform(key, idx, k + 3)
        _hsv(_uniform(key, idx, k + 4), 0.2 + 0.8 * _uniform(key, idx, k + 5),
             0.15 + 0.85 * _uniform(key, idx, k + 6), c)
        out[o + 4:o + 7] = c
        k += 7
    return k


@njit(cache=True)
def _paint_background(img, bg):
    H, W = img.shape[0], img.shape[1]
    if bg[_BG_MODE] == 0.0:
        for y in range(H):
            for x in range(W):
                for ch in range(3):
                    img[y, x, ch] = bg[_BG_C0 + ch]
        return
    gc, gs, g0 = bg[_BG_GRAD], bg[_BG_GRAD + 1], bg[_BG_GRAD + 2]
    amp = bg[_BG_STRIPE]
    freq, sc, ss, ph = bg[_BG_STRIPE + 1], bg[_BG_STRIPE + 2], bg[_BG_STRIPE + 3], bg[_BG_STRIPE + 4]
    nb = int(bg[_BG_NBLOB])
    for y in range(H):
        py = y + 0.5
        for x in range(W):
            px = x + 0.5
            t = g0 + gc * px + gs * py
            if t < 0.0:
                t = 0.0
            elif t > 1.0:
                t = 1.0
            r = bg[_BG_C0] + (bg[_BG_C1] - bg[_BG_C0]) * t
            g = bg[_BG_C0 + 1] + (bg[_BG_C1 + 1] - bg[_BG_C0 + 1]) * t
            b = bg[_BG_C0 + 2] + (bg[_BG_C1 + 2] - bg[_BG_C0 + 2]) * t
            if amp > 0.0:
                a = amp * (0.5 + 0.5 * math.sin(2.0 * math.pi * freq * (sc * px + ss * py) + ph))
                r += (bg[_BG_STRIPE + 5] - r) * a
                g += (bg[_BG_STRIPE + 6] - g) * a
                b += (bg[_BG_STRIPE + 7] - b) * a
            for j in range(nb):
                o = _BG_BLOB + 7 * j
                dx = px - bg[o]
                dy = py - bg[o + 1]
                q = (dx * dx + dy * dy) / (bg[o + 2] * bg[o + 2])
                if q < 1.0:
                    a = bg[o + 3] * (1.0 - q) * (1.0 - q)
                    r += (bg[o + 4] - r) * a
                    g += (bg[o + 5] - g) * a
                    b += (bg[o + 6] - b) * a
            img[y, x, 0] = r
            img[y, x, 1] = g
            img[y, x, 2] = b

