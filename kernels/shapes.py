"""Output-size arithmetic of convolutions and max-pools: the one place it is defined.

Every backend's kernels and the layers use these functions (docs/design.md, "Numerical conventions"):

* convolution: ``(h + 2*pad - k) // stride + 1`` (cross-correlation, zero padding);
* max-pool without padding: ceil mode ``ceil((h - k) / stride) + 1``, minus one if the last window would
  start outside the input (Caffe/PyTorch rule; windows clipped to the input), floor mode
  ``(h - k) // stride + 1``;
* max-pool with ``pad`` cells of ``-inf`` on both sides (PyTorch/ONNX rule): floor
  ``(h + 2*pad - k) // stride + 1``, ceil ``ceil((h + 2*pad - k) / stride) + 1`` minus one if the last window
  would start in the trailing padding.

Output ``i`` of a pool reads input rows ``[i*stride - pad, i*stride - pad + k)`` clipped to ``[0, h)``
(:func:`pool_window`).
"""
from __future__ import annotations


def conv_output_size(h, k, stride, pad):
    """Output length of a convolution along one axis: ``(h + 2*pad - k) // stride + 1``."""
    out = (h + 2 * pad - k) // stride + 1
    if out < 1:
        raise ValueError(f"convolution of size {k} stride {stride} pad {pad} does not fit input of size {h}")
    return out


def pool_output_size(h, k, stride, ceil_mode):
    """Output length of a max-pool along one axis (no padding).

    Ceil mode: ``ceil((h - k) / stride) + 1``, minus one if the last window would start outside the
    input (Caffe/PyTorch rule). Floor mode: ``(h - k) // stride + 1``.
    """
    if ceil_mode:
        out = -(-(h - k) // stride) + 1
        if (out - 1) * stride >= h:
            out -= 1
    else:
        out = (h - k) // stride + 1
    if out < 1:
        raise ValueError(f"max-pool of size {k} stride {stride} does not fit input of size {h}")
    return out


def padded_pool_output_size(h, k, stride, pad, ceil_mode):
    """Output length of a max-pool with ``pad`` cells of ``-inf`` on both sides (PyTorch/ONNX Runtime rule).

    Floor: ``(h + 2*pad - k) // stride + 1``. Ceil: ``ceil((h + 2*pad - k) / stride) + 1``, minus one if
    the last window would start at or after ``h + pad`` (in the trailing padding). ``pad=0`` is
    :func:`pool_output_size`.
    """
    if not pad:
        return pool_output_size(h, k, stride, ceil_mode)
    span = h + 2 * pad - k
    if span < 0:
        raise ValueError(f"max-pool of size {k} stride {stride} pad {pad} does not fit input of size {h}")
    if ceil_mode:
        out = -(-span // stride) + 1
        if (out - 1) * stride >= h + pad:
            out -= 1
    else:
        out = span // stride + 1
    return out


def pool_window(i, k, stride, pad=0):
    """``(start, stop)`` of the input rows read by output ``i`` of a pool, before clipping to the input."""
    start = i * stride - pad
    return start, start + k


def check_pool_geometry(x_shape, y_shape, k, stride, pad=0, what="maxpool_backward"):
    """Raise ValueError unless a pool of size ``k``, ``stride`` and ``pad`` (ceil or floor mode) maps the
    (N, C, H, W) ``x_shape`` to the (N, C, Ho, Wo) ``y_shape``; returns ``(k, stride, pad)`` as ints."""
    k, stride, pad = int(k), int(stride), int(pad)
    if k < 1 or stride < 1 or not 0 <= pad < k:
        raise ValueError(f"{what}: pool size {k}, stride {stride}, pad {pad}: expected k >= 1, stride >= 1, "
                         f"0 <= pad < k")
    (h, w), (ho, wo) = tuple(x_shape[2:]), tuple(y_shape[2:])

    def sizes(ceil):
        try:
            return (padded_pool_output_size(h, k, stride, pad, ceil),
                    padded_pool_output_size(w, k, stride, pad, ceil))
        except ValueError:
            return None

    if (ho, wo) not in (sizes(True), sizes(False)):
        raise ValueError(f"{what}: pool {k} stride {stride} pad {pad} does not map input {h}x{w} to output "
                         f"{ho}x{wo}")
    return k, stride, pad
