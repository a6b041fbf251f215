"""PyTorch's side of ``zfscratch bench --compare torch``, in a process of its own.

Why a process: PyTorch's wheels carry their own GNU OpenMP (``torch/lib/libgomp.so.1``), and once
PyTorch is imported, Numba's OpenMP thread pool binds to that copy (same soname: the dynamic linker
reuses the library already loaded), which read ``OMP_WAIT_POLICY`` when PyTorch was imported. Our
kernels ask for passive waiting (:mod:`zfscratch.kernels.cpu`); PyTorch's default is to spin, and
then Numba's idle OpenMP threads spin while our split GEMMs run. Measured on a 2-core machine:
conv3's forward (batch 16) took 9.3 ms alone and 14.2 ms with PyTorch merely imported. In one process
each side would run under the other's OpenMP settings; here PyTorch keeps its own defaults and our
kernels keep theirs, as for users who run one or the other. Runs still alternate (ours, PyTorch's,
ours, ...): the parent asks the child to run and time one call, and the child answers with the
seconds it measured around that call alone (pipe latency excluded).

Protocol (stdin/stdout of the child, ``python -m zfscratch.bench_twin``): each message is a JSON
header and an ``.npz`` payload (arrays only, read with ``allow_pickle=False``), each preceded by its
length as an 8-byte little-endian integer.
"""
from __future__ import annotations

import io
import json
import os
import struct
import subprocess
import sys
import tempfile
import time

import numpy as np

# ============================================================================= the network, described
_SPEC_KEYS = {"Conv2d": ("in_ch", "out_ch", "k", "stride", "pad", "groups"), "ReLU": (),
              "MaxPool2d": ("k", "stride", "ceil_mode"), "LocalResponseNorm": ("size", "alpha", "beta", "k"),
              "Flatten": (), "Linear": ("in_f", "out_f"), "Dropout": ("p",)}


def layer_specs(net):
    """The layers of ``net`` as JSON-able dicts: ``name``, ``kind`` and the hyperparameters PyTorch needs.

    Raises
    ------
    ValueError
        a layer kind with no PyTorch equivalent here.
    """
    specs = []
    for layer in net.layers:
        if layer.kind not in _SPEC_KEYS:
            raise ValueError(f"no PyTorch equivalent for layer {layer.name} ({layer.kind})")
        spec = {"name": layer.name, "kind": layer.kind}
        for key in _SPEC_KEYS[layer.kind]:
            v = getattr(layer, key)
            spec[key] = v if isinstance(v, bool) else (int(v) if isinstance(v, (int, np.integer)) else float(v))
        specs.append(spec)
    return specs


def build_modules(torch, specs, weights, device="cpu"):
    """PyTorch modules for :func:`layer_specs` with the weights (``net.state_dict()``) copied in: a list of
    ``(name, module)``."""
    nn = torch.nn
    mods = []
    for s in specs:
        kind = s["kind"]
        if kind == "Conv2d":
            m = nn.Conv2d(s["in_ch"], s["out_ch"], s["k"], stride=s["stride"], padding=s["pad"], groups=s["groups"])
        elif kind == "ReLU":
            m = nn.ReLU()
        elif kind == "MaxPool2d":
            m = nn.MaxPool2d(s["k"], s["stride"], ceil_mode=s["ceil_mode"])
        elif kind == "LocalResponseNorm":
            m = nn.LocalResponseNorm(s["size"], alpha=s["alpha"], beta=s["beta"], k=s["k"])
        elif kind == "Flatten":
            m = nn.Flatten()
        elif kind == "Linear":
            m = nn.Linear(s["in_f"], s["out_f"])
        elif kind == "Dropout":
            m = nn.Dropout(s["p"])
        else:
            raise ValueError(f"no PyTorch equivalent for layer {s['name']} ({kind})")
        if f"{s['name']}.w" in weights:
            with torch.no_grad():
                m.weight.copy_(torch.from_numpy(weights[f"{s['name']}.w"]))
                m.bias.copy_(torch.from_numpy(weights[f"{s['name']}.b"]))
        mods.append((s["name"], m.to(device)))
    return mods


# ============================================================================= framing
def _send(f, header, arrays=None):
    body = json.dumps(header).encode()
    buf = io.BytesIO()
    if arrays:
        np.savez(buf, **arrays)
    payload = buf.getvalue()
    f.write(struct.pack("<Q", len(body)) + body + struct.pack("<Q", len(payload)) + payload)
    f.flush()


def _read_exact(f, n):
    data = f.read(n)
    if data is None or len(data) != n:
        raise EOFError("the other side of the bench pipe closed")
    return data


def _recv(f):
    n = struct.unpack("<Q", _read_exact(f, 8))[0]
    header = json.loads(_read_exact(f, n))
    m = struct.unpack("<Q", _read_exact(f, 8))[0]
    arrays = {}
    if m:
        with np.load(io.BytesIO(_read_exact(f, m)), allow_pickle=False) as z:
            arrays = {k: z[k] for k in z.files}
    return header, arrays


# ============================================================================= the child
class _Server:
    """What the child holds: PyTorch, the twin's modules, the input batch and the timed callables."""

    def __init__(self, torch):
        self.torch = torch
        self.mods = self.x_host = self.labels_host = None
        self.device, self.sync = "cpu", lambda: None
        self.calls = {}

    def init(self, h, arrays):
        torch = self.torch
        if h.get("threads"):
            torch.set_num_threads(int(h["threads"]))
        device = "cuda" if h.get("cuda") and torch.cuda.is_available() else "cpu"
        if device != "cpu":
            self.sync = torch.cuda.synchronize
        self.device = device
        self.x_host, self.labels_host = arrays.pop("__x"), arrays.pop("__labels")
        self.mods = build_modules(torch, h["specs"], arrays, device)
        self._network_calls()
        return {"device": device, "threads": int(torch.get_num_threads()), "version": torch.__version__}, None

    def agree(self, h, arrays):
        """Logits, loss and parameter gradients of one eval-mode pass (dropout off)."""
        torch = self.torch
        model = torch.nn.Sequential(*[m for _, m in self.mods]).eval()
        model.zero_grad()
        tl = model(torch.from_numpy(self.x_host).to(self.device))
        labels = torch.from_numpy(self.labels_host.astype(np.int64)).to(self.device)
        loss = torch.nn.functional.cross_entropy(tl, labels)
        loss.backward()
        out = {"__logits": tl.detach().cpu().numpy()}
        for name, m in self.mods:
            for key in ("w", "b"):
                p = getattr(m, {"w": "weight", "b": "bias"}[key], None)
                if p is not None and p.grad is not None:
                    out[f"{name}.{key}"] = p.grad.detach().cpu().numpy()
        model.zero_grad()
        return {"loss": float(loss.item())}, out

    def layers(self, h, arrays):
        """Per module: a forward (no autograd) and, where it has inputs to differentiate, a backward
        through ``torch.autograd.grad`` (to the input, unless it is the first layer and
        ``first_needs_grad`` is false, and to the parameters), as our layers' ``backward``."""
        torch = self.torch
        rng = np.random.default_rng(1)
        a = torch.from_numpy(self.x_host).to(self.device)
        has_bwd = []
        for i, (name, m) in enumerate(self.mods):
            m.train()
            with torch.no_grad():
                y = m(a)
            dy = torch.from_numpy((rng.standard_normal(tuple(y.shape)) * 1e-3).astype(self.x_host.dtype)).to(self.device)
            need_input = i > 0 or bool(h.get("first_needs_grad"))
            ain = a.detach().requires_grad_(need_input)
            yg = m(ain)
            inputs = ([ain] if need_input else []) + list(m.parameters())

            def fwd(m=m, a=a):
                with torch.no_grad():
                    m(a)

            def bwd(yg=yg, inputs=inputs, dy=dy):
                torch.autograd.grad(yg, inputs, grad_outputs=dy, retain_graph=True)

            self.calls[f"layer{i}.fwd"] = fwd
            ok = bool(inputs) and yg.requires_grad
            if ok:
                self.calls[f"layer{i}.bwd"] = bwd
            has_bwd.append(ok)
            a = y
        return {"has_bwd": has_bwd}, None

    def drop_layers(self, h, arrays):
        """Free the per-layer graphs and gradients before the whole-network runs."""
        for key in [k for k in self.calls if k.startswith("layer")]:
            del self.calls[key]
        for _, m in self.mods:
            m.zero_grad(set_to_none=True)
        return {}, None

    def _network_calls(self):
        torch = self.torch
        model = torch.nn.Sequential(*[m for _, m in self.mods])
        x = torch.from_numpy(self.x_host).to(self.device)
        labels = torch.from_numpy(self.labels_host.astype(np.int64)).to(self.device)
        opt = torch.optim.SGD(model.parameters(), lr=1e-4, momentum=0.9, weight_decay=5e-4)

        def fwd():
            model.eval()
            with torch.no_grad():
                model(x)

        def step():
            model.train()
            opt.zero_grad(set_to_none=False)
            loss = torch.nn.functional.cross_entropy(model(x), labels)
            loss.backward()
            opt.step()

        self.calls["net.fwd"], self.calls["net.step"] = fwd, step

    def captum(self, h, arrays):
        """Set up Captum's ``Occlusion`` of the twin on one image (3, H, W) as the call ``captum.sweep``;
        one batch through the twin warms it up."""
        import captum.attr as cattr
        torch = self.torch
        model = torch.nn.Sequential(*[m for _, m in self.mods]).eval()
        xt = torch.from_numpy(arrays["image"][None]).to(self.device)
        occ = cattr.Occlusion(model)
        patch, stride, batch = int(h["patch"]), int(h["stride"]), int(h["batch"])

        def sweep():
            with torch.no_grad():
                occ.attribute(xt, sliding_window_shapes=(3, patch, patch), strides=(3, stride, stride),
                              baselines=0, target=int(h["label"]), perturbations_per_eval=batch)

        with torch.no_grad():
            model(xt.repeat(batch, 1, 1, 1))
        self.calls["captum.sweep"] = sweep
        return {"captum": cattr.__name__}, None

    def time(self, h, arrays):
        fn = self.calls[h["call"]]
        t0 = time.perf_counter()
        fn()
        self.sync()
        return {"seconds": time.perf_counter() - t0}, None

    def faults(self, h, arrays):
        from zfscratch.util.memstat import page_faults_per_step
        return {"faults": page_faults_per_step(self.calls[h["call"]], self.sync)}, None

    def memory(self, h, arrays):
        from zfscratch.util.memstat import step_memory
        return step_memory(self.calls[h["call"]], self.sync), None


def serve():
    """The child's loop: answer the parent's requests until ``quit`` or end of input."""
    out = os.fdopen(os.dup(1), "wb")  # the protocol's channel; stray prints of libraries go to stderr
    os.dup2(2, 1)
    inp = sys.stdin.buffer
    try:
        import torch
    except ImportError as e:
        _send(out, {"error": f"--compare torch needs PyTorch, which cannot be imported ({e}); "
                             "pip install torch, or pip install 'zfscratch[bench]'"})
        return 0
    server = _Server(torch)
    _send(out, {"ready": True})
    while True:
        try:
            h, arrays = _recv(inp)
        except EOFError:
            return 0
        if h["op"] == "quit":
            _send(out, {})
            return 0
        try:
            reply, reply_arrays = getattr(server, h["op"])(h, arrays)
        except Exception as e:  # reported to the parent, which raises it there in one line
            _send(out, {"error": f"PyTorch twin: {h['op']}: {type(e).__name__}: {e}"})
            continue
        _send(out, reply, reply_arrays)


# ============================================================================= the parent's handle
class TwinError(RuntimeError):
    """The PyTorch process failed; the message is one line."""


class RemoteCall:
    """A call the child times itself: calling it returns the child's seconds (see ``time_interleaved``)."""

    timed_elsewhere = True

    def __init__(self, twin, call):
        self.twin, self.call = twin, call

    def __call__(self):
        return self.twin.request("time", call=self.call)["seconds"]


class TwinProcess:
    """The PyTorch twin of ``net`` in a child process, fed the same weights and input batch.

    Parameters
    ----------
    net : the network (its layers and weights are copied)
    x_host : float32 (N, C, H, W), labels_host : int (N,)
    cuda : bool, run the twin on a CUDA device when PyTorch sees one
    threads : int or None, ``torch.set_num_threads`` in the child (None: PyTorch's default)

    Raises
    ------
    ImportError
        the child cannot import PyTorch (one-line message).
    TwinError
        the child failed otherwise.
    """

    def __init__(self, net, x_host, labels_host, cuda=False, threads=None, env=None):
        self._err = tempfile.TemporaryFile()
        self.proc = subprocess.Popen([sys.executable, "-m", "zfscratch.bench_twin"], stdin=subprocess.PIPE,
                                     stdout=subprocess.PIPE, stderr=self._err, env=env)
        try:
            first = self._reply()
            if "error" in first:
                raise ImportError(first["error"])
            arrays = dict(net.state_dict(), __x=np.ascontiguousarray(x_host),
                          __labels=np.ascontiguousarray(labels_host))
            info = self.request("init", arrays, specs=layer_specs(net), cuda=bool(cuda), threads=threads)
        except BaseException:
            self.close()
            raise
        self.device, self.threads, self.version = info["device"], info["threads"], info["version"]
        self.sync = lambda: None  # the child synchronizes inside its timing

    def _reply(self, with_arrays=False):
        try:
            h, arrays = _recv(self.proc.stdout)
        except EOFError:
            self._err.seek(0)
            tail = [ln for ln in self._err.read().decode(errors="replace").splitlines() if ln.strip()]
            raise TwinError("the PyTorch process ended unexpectedly" + (f": {tail[-1]}" if tail else "")) from None
        return (h, arrays) if with_arrays else h

    def request(self, op, arrays=None, **fields):
        """Send one request; returns the reply header (``request_arrays`` for the arrays too)."""
        return self.request_arrays(op, arrays, **fields)[0]

    def request_arrays(self, op, arrays=None, **fields):
        _send(self.proc.stdin, dict(op=op, **fields), arrays)
        h, out = self._reply(with_arrays=True)
        if "error" in h:
            raise TwinError(h["error"])
        return h, out

    def agreement(self):
        """``(logits, loss, {"layer.key": gradient float64})`` of one eval-mode pass in PyTorch."""
        h, arrays = self.request_arrays("agree")
        logits = arrays.pop("__logits")
        return logits, h["loss"], {k: v.astype(np.float64) for k, v in arrays.items()}

    def layer_runs(self, first_needs_grad=False):
        """Per module: ``(fwd, bwd or None)`` :class:`RemoteCall` s."""
        has = self.request("layers", first_needs_grad=bool(first_needs_grad))["has_bwd"]
        return [(RemoteCall(self, f"layer{i}.fwd"), RemoteCall(self, f"layer{i}.bwd") if ok else None)
                for i, ok in enumerate(has)]

    def drop_layer_runs(self):
        self.request("drop_layers")

    def network_runs(self):
        """``(forward, step)`` :class:`RemoteCall` s of the whole twin."""
        return RemoteCall(self, "net.fwd"), RemoteCall(self, "net.step")

    def captum_sweep(self, image, patch, stride, label, batch):
        """A :class:`RemoteCall` of Captum's ``Occlusion`` sweep over ``image`` (3, H, W) in the child
        (``perturbations_per_eval=batch``, zero baseline, target ``label``)."""
        self.request("captum", {"image": np.ascontiguousarray(image)}, patch=int(patch), stride=int(stride),
                     label=int(label), batch=int(batch))
        return RemoteCall(self, "captum.sweep")

    def page_faults_per_step(self):
        return self.request("faults", call="net.step")["faults"]

    def step_memory(self):
        return self.request("memory", call="net.step")

    def close(self):
        proc = getattr(self, "proc", None)
        if proc is not None and proc.poll() is None:
            try:
                _send(proc.stdin, {"op": "quit"})
                proc.stdin.close()
                proc.wait(timeout=30)
            except (OSError, ValueError, subprocess.TimeoutExpired):
                proc.kill()
                proc.wait()
        self._err.close()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self.close()


if __name__ == "__main__":
    sys.exit(serve())
