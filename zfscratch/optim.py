"""SGD with momentum, weight decay and the paper's filter-RMS renormalization; learning-rate schedules."""
from __future__ import annotations

import numpy as np

from zfscratch import kernels
from zfscratch.kernels.reference import sgd_update as _reference_update


class SGD:
    """Stochastic gradient descent with momentum (docs/design.md section 4).

    ``v = momentum*v - lr*(g + weight_decay*w)``; ``w += v``. Weight decay applies to weights only,
    not biases. After each step every conv filter whose RMS exceeds ``renorm_rms`` is rescaled to
    RMS ``renorm_rms`` (paper §3: "renormalize each filter in the convolutional layers whose RMS value
    exceeds a fixed radius of 1e-1"). ``renorm_rms=None`` disables it.

    The step reads ``net.grads()`` in the order of ``net.params()``: gradients can be all-reduced
    between ``backward`` and ``step`` (docs/design.md section 9).
    """

    def __init__(self, net, lr=0.01, momentum=0.9, weight_decay=5e-4, renorm_rms=0.1):
        if lr <= 0:
            raise ValueError(f"learning rate must be positive, got {lr}")
        if not 0 <= momentum < 1:
            raise ValueError(f"momentum must be in [0, 1), got {momentum}")
        self.net = net
        self.lr, self.momentum, self.weight_decay, self.renorm_rms = float(lr), float(momentum), \
            float(weight_decay), renorm_rms
        xp = net.backend.xp
        self.velocity = [xp.zeros_like(p) for _, p in net.params()]

    def _conv_weights(self):
        return [l.params["w"] for l in self.net.layers if l.kind == "Conv2d"]

    def step(self):
        """Apply one update with the accumulated gradients (does not zero them)."""
        # the backend's fused update when it has one (numba: one parallel pass, no temporaries)
        update = kernels.optional(self.net.backend.kernels, "sgd_update") or _reference_update
        for (name, p), g, v in zip(self.net.params(), self.net.grads(), self.velocity):
            decay = self.weight_decay if name.endswith(".w") else 0.0
            update(p, g, v, self.lr, self.momentum, decay)
        if self.renorm_rms is not None:
            for w in self._conv_weights():
                renormalize_filters(w, self.renorm_rms, self.net.backend.xp)

    def state_dict(self):
        """Hyper-parameters and velocities (host arrays keyed by parameter name)."""
        names = [n for n, _ in self.net.params()]
        return {"lr": self.lr, "momentum": self.momentum, "weight_decay": self.weight_decay,
                "renorm_rms": self.renorm_rms,
                "velocity": {n: np.array(self.net.backend.to_host(v)) for n, v in zip(names, self.velocity)}}

    def load_state_dict(self, state):
        self.lr = float(state["lr"])
        self.momentum = float(state["momentum"])
        self.weight_decay = float(state["weight_decay"])
        self.renorm_rms = state["renorm_rms"]
        for (n, p), v in zip(self.net.params(), self.velocity):
            src = state["velocity"][n]
            if tuple(src.shape) != tuple(v.shape):
                raise ValueError(f"optimizer state for {n}: expected shape {tuple(v.shape)}, got {tuple(src.shape)}")
            v[...] = self.net.backend.to_device(src, v.dtype)


def renormalize_filters(w, radius=0.1, xp=np):
    """Rescale in place every filter ``w[f]`` whose RMS exceeds ``radius`` to RMS ``radius``.

    w : (F, C, kh, kw) float
    """
    rms = xp.sqrt((w.reshape(w.shape[0], -1) ** 2).mean(axis=1))
    factor = xp.where(rms > radius, radius / xp.maximum(rms, 1e-30), 1.0).astype(w.dtype)
    w *= factor.reshape(-1, 1, 1, 1)
    return w


class PlateauSchedule:
    """Anneal the learning rate when a monitored metric stops improving (paper: "annealed on plateau").

    Parameters
    ----------
    optimizer : SGD
    factor : float, lr multiplier on a plateau
    patience : int, epochs without improvement before annealing
    threshold : float, minimum improvement that counts
    min_lr : float
    mode : "max" (accuracy) or "min" (loss)
    """

    def __init__(self, optimizer, factor=0.1, patience=2, threshold=1e-3, min_lr=1e-5, mode="max"):
        self.opt, self.factor, self.patience = optimizer, float(factor), int(patience)
        self.threshold, self.min_lr, self.mode = float(threshold), float(min_lr), mode
        self.best = None
        self.bad = 0

    def step(self, metric):
        """Record this epoch's metric; returns True if the lr was annealed."""
        sign = 1.0 if self.mode == "max" else -1.0
        if self.best is None or sign * (metric - self.best) > self.threshold:
            self.best, self.bad = metric, 0
            return False
        self.bad += 1
        if self.bad > self.patience and self.opt.lr > self.min_lr:
            self.opt.lr = max(self.opt.lr * self.factor, self.min_lr)
            self.bad = 0
            return True
        return False

    def state_dict(self):
        return {"best": self.best, "bad": self.bad}

    def load_state_dict(self, state):
        self.best, self.bad = state["best"], int(state["bad"])


class StepSchedule:
    """Multiply the lr by ``gamma`` at each epoch in ``milestones`` (call ``step(epoch)`` after an epoch)."""

    def __init__(self, optimizer, milestones, gamma=0.1):
        self.opt, self.milestones, self.gamma = optimizer, sorted(int(m) for m in milestones), float(gamma)

    def step(self, epoch):
        if int(epoch) in self.milestones:
            self.opt.lr *= self.gamma
            return True
        return False

    def state_dict(self):
        return {}

    def load_state_dict(self, state):
        pass
