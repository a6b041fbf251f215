"""The embedded default dataset: seeded synthetic objects with parts at known positions.

Nothing is downloaded: every image is rendered on demand, deterministically from
``(seed, split, index)``. Ten object classes are drawn from a few analytic primitives (ellipses,
boxes, triangles, capsules, rings), each class with named parts (a face has a ``left_eye``, a
``right_eye``, a ``nose`` and a ``mouth``; a house a ``roof``, ``door``, ``window`` and ``chimney``,
...). Every object is placed at a random position, scale, rotation and colour, on a plain grey
background or on a coloured, cluttered one (gradients, soft blobs, stripes) -- the paper's
"with / without coloured background".

Conventions
-----------
- Images are ``(H, W, 3) uint8`` RGB; pixel ``(x, y)`` covers ``[x, x+1) x [y, y+1)``, so the pixel
  centre is at ``(x + 0.5, y + 0.5)``; ``x`` is the column, ``y`` the row (downwards).
- ``scale`` is the diameter of the object's bounding circle as a fraction of the image side:
  ``scale=1`` makes the object touch all four borders (before rotation). The object's radius in
  pixels is ``R = scale * size / 2``.
- ``angle`` is in degrees, positive = clockwise on screen (y points down).
- Part names are in the object's own frame before rotation: ``left_eye`` is the eye on the image's
  left for an upright face (the person's right eye).
- ``bbox = (x0, y0, x1, y1)`` in pixels, ``x1``/``y1`` exclusive: the smallest box holding every pixel
  whose object coverage is at least 0.5 (clipped to the image).
- ``landmarks = {part: (x, y)}`` in pixels (float); ``part_radii = {part: r}`` in pixels -- a disc of
  that radius around the landmark covers the part (use :meth:`SyntheticDataset.part_mask`).

Anti-aliasing: each group of primitives (a union, e.g. the five points of a star) is rendered from
its signed distance with a one-pixel ramp, so shapes have smooth edges and move smoothly under
sub-pixel translation.

Speed: rendering is one Numba ``@njit(cache=True)`` pass per image (no Python per pixel); measured
on one core of a busy 2-core machine: 64x64 plain ~5,500-10,700 images/s, coloured ~3,900-6,100
images/s (32x32: 17,000 / 12,600; 224x224: 460 / 370). See ``benchmark()``. The first call
compiles the kernels (~12 s of CPU once; cached on disk afterwards).

Difficulty (measured, 64x64, 20,000 training / 2,000 validation images): a linear softmax
classifier on standardized raw pixels reaches 25% (plain) and 16% (coloured) validation accuracy
(chance: 10%); a network with zfnet_small's exact shapes (PyTorch, SGD lr 0.01, momentum 0.9,
batch 64) reaches 96.9% (plain) after 2 epochs, and 96.2% (coloured, lr 0.02) after 3 epochs.

Layout
------
- :mod:`.shapes` -- the primitives, the ten class templates (groups of primitives with named parts and
  landmarks) and their packed arrays; :data:`CLASS_NAMES`, :func:`class_parts`.
- :mod:`.rng` -- counter-based random numbers (splitmix64) and stream keys.
- :mod:`.style` -- colours (palettes), background parameters and the background painter.
- :mod:`.raster` -- signed distances of the primitives and the anti-aliased object rasterizer.
- :mod:`.sampling` -- per-index draws: the balanced label shuffle, pose, palette and background.
- :mod:`.dataset` -- :class:`SyntheticDataset`, :class:`Sample` and :func:`benchmark`.
"""
from .dataset import Sample, SyntheticDataset, benchmark
from .shapes import CLASS_NAMES, class_parts

__all__ = [
    "CLASS_NAMES", "Sample", "SyntheticDataset", "class_parts", "benchmark",
]
