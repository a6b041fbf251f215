"""CPU kernels (package; one module per concern): Numba for the data movement and the element-wise work,
BLAS (through NumPy) for the GEMMs.

Same functions and the same semantics as :mod:`zfscratch.kernels.reference` (docs/design.md sections 3, 4); the tests
in ``tests/test_cpu_kernels.py`` hold them to it (identical switches, values to rounding).

How the convolution is done
---------------------------
A convolution is one GEMM per chunk of images, ``Y (F, P) = W (F, K) @ cols (K, P)``, with
``K = C*kh*kw`` and ``P = images_in_chunk * Ho*Wo`` (docs/design.md section 10):

* **Polyphase im2col.** The padded input is first split into its ``stride x stride`` phases,
  ``xph[c, a, b, u, v] = xpad[c, u*s + a, v*s + b]``. In phase space every row of ``cols`` is a set of
  *contiguous* runs (``xph[c, i%s, j%s, oy + i//s, j//s : j//s + Wo]``), so im2col is a plain vectorised
  copy for every stride and the padding costs no branch. The adjoint (col2im) accumulates into phase
  space the same way, then merges the phases back.
* **Bias folded into the GEMM.** ``cols`` gets an extra row of ones and ``W`` the bias as an extra
  column, so ``y = W @ x + b`` costs no extra pass; in backward the same row makes the GEMM return
  ``db`` as the last column of ``dW``.
* **Batch folding.** Several images go side by side into one GEMM: as many as fit a ``cols`` workspace
  of ``_CHUNK_BYTES`` (conv1 and conv2 of ZFNet: 4 images), and at least ``_TARGET_COLS`` columns for
  small maps. Fewer, larger GEMMs run closer to the BLAS's peak and cost fewer thread hand-offs (on a
  busy machine each hand-off can wait a scheduler slice).
* **Split GEMMs.** Each GEMM is split by columns over Numba's thread count, every part calling
  single-threaded BLAS from its own thread (:func:`_matmul`): OpenBLAS's own threads busy-wait.
* **Winograd for 3x3 stride-1 layers** (conv3-5): F(2x2, 3x3), 16 GEMMs on transformed tiles, 2.25x
  fewer multiply-adds; backward through the exact adjoints of the transforms (see that section).
* **Strided layers on their stride phases** (conv2, 5x5 stride 2): a stride-s layer is a stride-1
  convolution of the s*s phases (as channels) with the sub-kernels; when those are 3x3 it goes through
  the same Winograd, 1.56x fewer multiply-adds than im2col (:mod:`.conv`).
* **Thin-K layers by row blocks** (conv1, K = 147): im2col of a few output rows into a per-thread
  buffer that stays in cache, GEMM into the output right away; the filter gradient splits the long
  dimension over the threads (:mod:`.convblock`).
* **Fully connected backward in one pass** over the weights: ``dW`` accumulated in place, ``dx`` from
  the same read (:mod:`.linear`).
* **Workspaces.** The ``cols``, phase and Winograd buffers are kept per thread and reused across calls
  (docs/design.md section 10: fresh large buffers cost page faults). They never leave this module: every array a
  kernel returns is freshly allocated.

Winograd changes the rounding, not the result: the tests hold it to the reference like the rest.

Numba rules (docs/design.md section 2): ``cache=True``; ``prange`` only on the outermost loop and every iteration
writes its own slice (no races); no ``fastmath`` (pooling sees ``-inf`` and NaN must propagate).

Layout: :mod:`.threads` (BLAS thread plumbing and the split-GEMM thread pool), :mod:`.memory`
(per-thread workspaces and the Numba run-copy helpers), :mod:`.gemm` (split GEMMs), :mod:`.conv`
(im2col convolution; strided layers on their phases), :mod:`.convblock` (thin-K layers by row
blocks), :mod:`.linear` (fused fully connected backward), :mod:`.winograd` (F(2x2, 3x3)), :mod:`.pool` (max-pool), :mod:`.pointwise`
(ReLU, LRN, softmax, SGD), :mod:`.lcn` (local contrast normalization). This module re-exports the kernel contract.
"""
from __future__ import annotations

import os

# Numba's parallel loops run on GNU OpenMP here; by default its idle threads spin after every parallel
# region, taking the cores from BLAS's threads (2 cores) and, on a busy machine, from the thread that
# still has work (measured: the kernel tests ran 9x slower under load). Sleep instead. Must be set
# before the OpenMP runtime loads (numba loads it at the first parallel call); a user's value wins.
# Set here, before any submodule imports numba.
os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")

NAME = "cpu"

from .conv import _ConvGeom, conv2d_backward, conv2d_backward_data, conv2d_forward  # noqa: E402,F401
from .gemm import matmul  # noqa: E402
from .linear import linear_backward, linear_forward  # noqa: E402
from .lcn import lcn_backward, lcn_forward  # noqa: E402
from .memory import clear_workspaces  # noqa: E402
from .pointwise import (lrn_backward, lrn_forward, relu_backward, relu_forward,  # noqa: E402
                        sgd_update, softmax_xent)
from .pool import maxpool_backward, maxpool_forward  # noqa: E402
from .threads import _BLAS  # noqa: E402,F401
from .winograd import _use_winograd  # noqa: E402,F401

# _ConvGeom, _use_winograd and _BLAS are re-exported for the kernel tests
__all__ = [
    "NAME", "conv2d_forward", "conv2d_backward", "conv2d_backward_data", "maxpool_forward",
    "maxpool_backward", "relu_forward", "relu_backward", "lrn_forward", "lrn_backward", "lcn_forward",
    "lcn_backward", "softmax_xent",
    "sgd_update", "matmul", "linear_forward", "linear_backward", "clear_workspaces",
]
