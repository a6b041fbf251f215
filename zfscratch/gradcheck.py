"""Float64 centered-difference gradient checks of every layer and of a small whole network.

Each check compares the analytic gradients of ``loss = sum(forward(x) * R)`` (R a fixed random
projection) with ``(loss(v + h) - loss(v - h)) / 2h`` on a random subset of entries of the input
and of every parameter. Inputs avoid kinks: ReLU inputs stay at least 0.1 away from 0, pooling
inputs are shuffled distinct values spaced well above ``h``. The reported error of an array is
``max|analytic - numeric| / max|numeric|`` over the checked entries; a check passes below ``tol``.
"""
from __future__ import annotations

import functools

import numpy as np

from zfscratch.backend import get_backend
from zfscratch.layers import (Conv2d, Dropout, Flatten, Linear, LocalContrastNorm, LocalResponseNorm, MaxPool2d, ReLU,
                              SoftmaxCrossEntropy)
from zfscratch.net import Sequential

TOL = 1e-6


def _away_from_zero(rng, shape, lo=0.1):
    return rng.choice([-1.0, 1.0], size=shape) * rng.uniform(lo, 1.0, size=shape)


def _distinct(rng, shape):
    """Shuffled distinct values (spacing 1/size, far above h) so max-pool choices never flip."""
    n = int(np.prod(shape))
    return (rng.permutation(n).astype(np.float64) / n - 0.5).reshape(shape) * 2.0


def _entries(rng, size, max_checks):
    return np.arange(size) if size <= max_checks else rng.choice(size, max_checks, replace=False)


def _rel_err(a, n):
    return float(np.max(np.abs(a - n)) / max(np.max(np.abs(n)), 1e-12))


def check_function(forward, backward, x, params, rng, h=1e-6, max_checks=40, reset=None):
    """Compare analytic and numeric gradients of ``sum(forward(x) * R)``.

    Parameters
    ----------
    forward : callable x -> y
    backward : callable dy -> (dx, {name: grad})
    x : float64 array (host or device)
    params : dict name -> array (perturbed in place)
    reset : callable or None, called before every forward (e.g. to replay a dropout mask)

    Returns
    -------
    dict name -> relative error (``"x"`` for the input)
    """
    to_host = lambda a: np.asarray(a.get() if hasattr(a, "get") else a)
    reset = reset or (lambda: None)
    reset()
    y = forward(x)
    r_host = rng.standard_normal(y.shape)
    r = _like(y, r_host)

    def loss():
        reset()
        return float(to_host((forward(x) * r).sum()))

    reset()
    forward(x)
    dx, grads = backward(r)
    errs = {}
    for name, arr, ana in [("x", x, dx)] + [(k, params[k], grads[k]) for k in params]:
        if ana is None:
            continue
        ana = to_host(ana).reshape(-1)
        flat_idx = _entries(rng, arr.size, max_checks)
        num = np.empty(len(flat_idx))
        view = arr.reshape(-1)
        for j, i in enumerate(flat_idx):
            old = float(to_host(view[i]))
            view[i] = old + h
            lp = loss()
            view[i] = old - h
            lm = loss()
            view[i] = old
            num[j] = (lp - lm) / (2 * h)
        errs[name] = _rel_err(ana[flat_idx], num)
    return errs


def _like(y, host):
    """``host`` as an array of the same kind (numpy/cupy) as ``y``."""
    if isinstance(y, np.ndarray):
        return host
    import cupy  # only for cupy arrays
    return cupy.asarray(host)


def check_layer(layer, x, rng, **kw):
    """Gradient check of one layer (float64). Returns dict name -> relative error."""
    layer.zero_grads()

    def backward(dy):
        layer.zero_grads()
        return layer.backward(dy), layer.grads

    state = layer.rng.bit_generator.state if isinstance(layer, Dropout) else None
    reset = (lambda: setattr(layer.rng.bit_generator, "state", state)) if state else None
    return check_function(lambda v: layer.forward(v, train=True), backward, x, layer.params, rng, reset=reset, **kw)


def _small_net(backend, rng):
    layers = [Conv2d(3, 4, 3, stride=1, pad=1, name="conv1", init_std=0.3, rng=rng, dtype=np.float64),
              ReLU(name="relu1"), MaxPool2d(3, 2, ceil_mode=True, name="pool1"),
              LocalResponseNorm(size=3, alpha=0.5, beta=0.75, k=1.0, name="norm1"),
              Conv2d(4, 5, 3, stride=2, pad=1, name="conv2", init_std=0.3, rng=rng, dtype=np.float64),
              ReLU(name="relu2"), Flatten(name="flatten"),
              Linear(5 * 2 * 2, 6, name="fc1", init_std=0.3, rng=rng, dtype=np.float64),
              Dropout(0.5, name="drop1", seed=3), Linear(6, 4, name="fc2", init_std=0.3, rng=rng, dtype=np.float64)]
    return Sequential(layers, backend=backend)


# ---------------------------------------------------------------- the cases, one function per layer family
# Each takes the backend and the seed first (bound by :func:`cases`), draws everything from a fresh
# ``default_rng(seed)`` and returns check_function's dict name -> relative error.

def _dev(be, a):
    """Host array -> float64 array on ``be``'s device."""
    return be.to_device(a, np.float64)


def _conv_case(be, seed, k, s, p, cin=3, cout=4, hw=(7, 8)):
    """``Conv2d(cin, cout, k, stride=s, pad=p)`` on a (2, cin, *hw) input, with a random bias."""
    rng = np.random.default_rng(seed)
    layer = Conv2d(cin, cout, k, stride=s, pad=p, rng=rng, init_std=0.5, dtype=np.float64, name="conv")
    layer.set_backend(be)
    layer.params["b"][...] = _dev(be, rng.standard_normal(cout))
    return check_layer(layer, _dev(be, rng.standard_normal((2, cin) + hw)), rng)


def _grouped_conv_case(be, seed):
    """A 3x3 ``Conv2d`` with 2 groups (4 -> 6 channels) on a (2, 4, 5, 5) input."""
    rng = np.random.default_rng(seed)
    layer = Conv2d(4, 6, 3, stride=1, pad=1, groups=2, rng=rng, init_std=0.5, dtype=np.float64, name="gconv")
    layer.set_backend(be)
    return check_layer(layer, _dev(be, rng.standard_normal((2, 4, 5, 5))), rng)


def _relu_case(be, seed):
    """``ReLU`` on (2, 3, 5, 5) inputs at least 0.1 from its kink."""
    rng = np.random.default_rng(seed)
    return check_layer(ReLU().set_backend(be), _dev(be, _away_from_zero(rng, (2, 3, 5, 5))), rng)


def _pool_case(be, seed, k, s, ceil, hw):
    """``MaxPool2d(k, s, ceil)`` on a (2, 3, *hw) input of distinct values (no tie can flip)."""
    rng = np.random.default_rng(seed)
    return check_layer(MaxPool2d(k, s, ceil).set_backend(be), _dev(be, _distinct(rng, (2, 3) + hw)), rng)


def _lrn_case(be, seed, size, alpha, beta, k):
    """``LocalResponseNorm(size, alpha, beta, k)`` on a (2, 7, 4, 3) input."""
    rng = np.random.default_rng(seed)
    layer = LocalResponseNorm(size, alpha, beta, k).set_backend(be)
    return check_layer(layer, _dev(be, rng.standard_normal((2, 7, 4, 3))), rng)


def _lcn_case(be, seed, size, sigma, floor, shape):
    """``LocalContrastNorm(size, sigma, floor)`` on an input of ``shape`` (N, C, H, W)."""
    # Random normal inputs keep every sig[i, j] and mean sig well away (>> the 1e-6 step) from the
    # max(c, sig) and max(mean, floor) kinks, so central differences see one smooth branch.
    rng = np.random.default_rng(seed)
    layer = LocalContrastNorm(size, sigma, floor).set_backend(be)
    return check_layer(layer, _dev(be, rng.standard_normal(shape)), rng)


def _linear_case(be, seed):
    """``Linear(7, 5)`` on a (3, 7) input."""
    rng = np.random.default_rng(seed)
    layer = Linear(7, 5, rng=rng, init_std=0.5, dtype=np.float64).set_backend(be)
    return check_layer(layer, _dev(be, rng.standard_normal((3, 7))), rng)


def _flatten_case(be, seed):
    """``Flatten`` of a (2, 3, 4, 5) input."""
    rng = np.random.default_rng(seed)
    return check_layer(Flatten().set_backend(be), _dev(be, rng.standard_normal((2, 3, 4, 5))), rng)


def _dropout_case(be, seed):
    """``Dropout(0.5)`` in training mode on a (4, 9) input (the mask replayed for every evaluation)."""
    rng = np.random.default_rng(seed)
    return check_layer(Dropout(0.5, seed=1).set_backend(be), _dev(be, rng.standard_normal((4, 9))), rng)


def _softmax_case(be, seed):
    """``SoftmaxCrossEntropy`` of (4, 5) logits against 4 labels; the input gradient only."""
    rng = np.random.default_rng(seed)
    loss = SoftmaxCrossEntropy(be)
    labels = rng.integers(0, 5, size=4)
    logits = _dev(be, rng.standard_normal((4, 5)) * 2)

    def fwd(z):  # scalar loss broadcast to a (1,) array so check_function's projection applies
        return be.xp.asarray([loss.forward(z, labels)], dtype=np.float64)

    def bwd(r):
        return loss.backward() * float(be.to_host(r)[0]), {}
    return check_function(fwd, bwd, logits, {}, rng)


def _net_case(be, seed):
    """The loss of :func:`_small_net` on a (3, 3, 6, 6) batch: the input and every parameter."""
    rng = np.random.default_rng(seed)
    model = _small_net(be, rng)
    loss = SoftmaxCrossEntropy(be)
    x = _dev(be, _away_from_zero(rng, (3, 3, 6, 6)))
    labels = rng.integers(0, 4, size=3)
    params = {k: v for k, v in model.params()}
    drops = model.dropout_layers()
    states = [d.rng.bit_generator.state for d in drops]

    def reset():  # the same dropout masks for every evaluation of the loss
        for d, s in zip(drops, states):
            d.rng.bit_generator.state = s

    def fwd(v):
        return be.xp.asarray([loss.forward(model.forward(v, train=True), labels)], dtype=np.float64)

    def bwd(r):
        model.zero_grads()
        model.layers[0].need_dx = True
        dx = model.backward(loss.backward() * float(be.to_host(r)[0]))
        return dx, dict(zip(params, model.grads()))
    return check_function(fwd, bwd, x, params, rng, reset=reset, max_checks=25)


def cases(backend="numpy", seed=0):
    """``[(name, thunk)]``: every gradient check; each thunk returns dict name -> relative error."""
    be = get_backend(backend)

    def case(fn, *args, **kw):
        return functools.partial(fn, be, seed, *args, **kw)

    return [
        ("Conv2d 3x3 s1 p1", case(_conv_case, 3, 1, 1)),
        ("Conv2d 3x3 s2 p0", case(_conv_case, 3, 2, 0)),
        ("Conv2d 5x5 s2 p2", case(_conv_case, 5, 2, 2, hw=(9, 10))),
        ("Conv2d 7x7 s2 p1", case(_conv_case, 7, 2, 1, cin=2, hw=(11, 11))),
        ("Conv2d 3x3 groups=2", case(_grouped_conv_case)),
        ("ReLU", case(_relu_case)),
        ("MaxPool2d 3 s2 ceil", case(_pool_case, 3, 2, True, (8, 7))),
        ("MaxPool2d 2 s2 floor", case(_pool_case, 2, 2, False, (7, 6))),
        ("LocalResponseNorm 5 (ZFNet)", case(_lrn_case, 5, 1e-4, 0.75, 2.0)),
        ("LocalResponseNorm 3 large alpha", case(_lrn_case, 3, 2.0, 0.75, 1.0)),
        ("LocalResponseNorm 4 even size", case(_lrn_case, 4, 1.5, 0.6, 1.0)),
        ("LocalContrastNorm 3 (sig and mean switches)", case(_lcn_case, 3, 1.0, 1e-4, (2, 5, 6, 7))),
        ("LocalContrastNorm 5 wide Gaussian", case(_lcn_case, 5, 2.0, 1e-4, (2, 3, 7, 8))),
        ("LocalContrastNorm floor-bound divisor", case(_lcn_case, 3, 1.0, 10.0, (2, 4, 5, 5))),
        ("Linear", case(_linear_case)),
        ("Flatten", case(_flatten_case)),
        ("Dropout (train)", case(_dropout_case)),
        ("SoftmaxCrossEntropy", case(_softmax_case)),
        ("Net conv-relu-pool-lcn-fc-softmax", case(_net_case)),
    ]


def run_all(backend="numpy", tol=TOL, seed=0):
    """Run every check. Returns ``[(name, max relative error, passed)]``."""
    out = []
    for name, thunk in cases(backend, seed):
        errs = thunk()
        worst = max(errs.values()) if errs else 0.0
        out.append((name, worst, worst < tol))
    return out
