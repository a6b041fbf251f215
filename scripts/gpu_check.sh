#!/usr/bin/env bash
# GPU check of the CuPy backend, in one command, on a machine with an NVIDIA GPU and
# Python with numpy, numba, cupy, torch, pytest, tqdm, matplotlib and pillow installed (no network):
#
#   bash scripts/gpu_check.sh
#
# Stages (each one's exit status is reported; a failing stage does not stop the next):
#   setup       versions, GPU, `pip install -e . --no-deps --no-build-isolation` (offline)
#   tests_gpu   pytest tests/test_gpu.py (CuPy kernels vs reference, gradient checks, training, weights)
#   profile     per-convolution split of the time (im2col, GEMMs, col2im) and pool/LRN kernels
#   bench_off   zfscratch bench --backend cupy --compare torch --model zfnet --size 224 --batch 128,
#               TF32 off everywhere (target: training step >= 0.7x PyTorch/cuDNN)
#   tests_other the other tests parametrized over the cupy backend (pytest -k cupy)
#   bench_on    the same bench with TF32 allowed (CuPy and PyTorch)
#   sanitizer   compute-sanitizer memcheck over every kernel on small inputs (when installed)
# then a summary. Logs go to $OUT when set (else $GPU_CHECK_LOGS, else /tmp/zfscratch-gpu-check):
# at most 8 files. The whole run is kept under GPU_CHECK_BUDGET seconds (default 290).
# Environment: PYTHON (default python3), BENCH_BATCH (128), BENCH_REPEATS (5), GPU_CHECK_SKIP_INSTALL=1
# (dry run where the package is already installed).
set -u

REPO="$(cd "$(dirname "${BASH_SOURCE[0]}")/.." && pwd)"
cd "$REPO" || exit 2
PY="${PYTHON:-python3}"
LOGS="${OUT:-${GPU_CHECK_LOGS:-/tmp/zfscratch-gpu-check}}"
mkdir -p "$LOGS"
WORK="$(mktemp -d /tmp/zfscratch-gpu-check-work.XXXXXX)"
BUDGET="${GPU_CHECK_BUDGET:-290}"
BATCH="${BENCH_BATCH:-128}"
REPEATS="${BENCH_REPEATS:-5}"
START=$SECONDS
export PYTHONUNBUFFERED=1 PIP_NO_INDEX=1 PIP_DISABLE_PIP_VERSION_CHECK=1
export PYTHONDONTWRITEBYTECODE=1

declare -a NAMES=() STATUS=() TIMES=()

left() { echo $(( BUDGET - (SECONDS - START) )); }

# run_stage NAME LIMIT_S LOGFILE CMD...: run CMD with a time limit (capped by the budget left),
# output to the console and to LOGFILE (appended); record its status.
run_stage() {
    local name="$1" limit="$2" log="$3"
    shift 3
    local remain t0 rc
    remain=$(left)
    (( limit > remain )) && limit=$remain
    t0=$SECONDS
    if (( limit < 10 )); then
        echo "=== $name: SKIPPED (time budget spent)" | tee -a "$log"
        NAMES+=("$name"); STATUS+=("skipped: no time left"); TIMES+=(0)
        return 0
    fi
    echo "=== $name (limit ${limit}s): $*" | tee -a "$log"
    timeout --kill-after=10 "$limit" "$@" 2>&1 | tee -a "$log"
    rc=${PIPESTATUS[0]}
    local what
    case $rc in
        0) what="ok" ;;
        5) what="no tests selected (rc 5)" ;;
        124|137) what="TIMEOUT after ${limit}s (rc $rc)" ;;
        *) what="FAILED (rc $rc)" ;;
    esac
    echo "=== $name: $what in $((SECONDS - t0))s" | tee -a "$log"
    NAMES+=("$name"); STATUS+=("$what"); TIMES+=($((SECONDS - t0)))
    return 0
}

# ------------------------------------------------------------------ setup
SETUP_LOG="$LOGS/setup.log"
: > "$SETUP_LOG"
{
    echo "date: $(date -u +%Y-%m-%dT%H:%M:%SZ)"
    echo "repo: $REPO ($(git -C "$REPO" rev-parse --short HEAD 2>/dev/null || echo 'no git'))"
    command -v nvidia-smi >/dev/null && nvidia-smi --query-gpu=name,driver_version,memory.total,clocks.max.sm --format=csv
    echo "python: $(command -v "$PY") $("$PY" -V 2>&1)"
    "$PY" - <<'EOF'
import importlib
for name in ("numpy", "numba", "cupy", "torch", "pytest"):
    try:
        m = importlib.import_module(name)
        print(f"{name}: {m.__version__}")
    except Exception as e:
        print(f"{name}: NOT AVAILABLE ({type(e).__name__}: {e})")
try:
    import cupy
    n = cupy.cuda.runtime.getDeviceCount()
    props = cupy.cuda.runtime.getDeviceProperties(0)
    print(f"cupy devices: {n}; device 0: {props['name'].decode()}, sm_{props['major']}{props['minor']}; "
          f"CUDA runtime {cupy.cuda.runtime.runtimeGetVersion()}, driver {cupy.cuda.runtime.driverGetVersion()}")
except Exception as e:
    print(f"cupy device query failed: {type(e).__name__}: {e}")
try:
    import torch
    print(f"torch cuda: {torch.cuda.is_available()}, cudnn {torch.backends.cudnn.version()}")
except Exception as e:
    print(f"torch cuda query failed: {e}")
EOF
} 2>&1 | tee -a "$SETUP_LOG"

cat > "$WORK/install.sh" <<'EOF'
# editable install (offline); fallback: a tree of symlinks with kernels/ as zfscratch/kernels (exit 3)
PY="$1"; WORK="$2"; REPO="$3"
"$PY" -m pip install -q -e . --no-deps --no-build-isolation && "$PY" -c "import zfscratch.kernels.gpu" && exit 0
echo "editable install failed; using a symlink tree on PYTHONPATH"
mkdir -p "$WORK/src" && cp -rs "$REPO/zfscratch" "$WORK/src/zfscratch" && ln -sfn "$REPO/kernels" "$WORK/src/zfscratch/kernels"
PYTHONSAFEPATH=1 PYTHONPATH="$WORK/src${PYTHONPATH:+:$PYTHONPATH}" "$PY" -c "import zfscratch.kernels.gpu, zfscratch.cli" || exit 1
exit 3
EOF
if [[ -n "${GPU_CHECK_SKIP_INSTALL:-}" ]]; then  # dry runs in an environment that has the package
    NAMES+=(install); STATUS+=("skipped: GPU_CHECK_SKIP_INSTALL"); TIMES+=(0)
else
    run_stage install 120 "$SETUP_LOG" bash "$WORK/install.sh" "$PY" "$WORK" "$REPO"
fi
if [[ "${STATUS[-1]}" == "FAILED (rc 3)" ]]; then
    # PYTHONSAFEPATH: the repo's own zfscratch/ (which lacks kernels/) must not shadow the tree
    export PYTHONPATH="$WORK/src${PYTHONPATH:+:$PYTHONPATH}" PYTHONSAFEPATH=1
    STATUS[-1]="ok (symlink tree on PYTHONPATH)"
fi

# TF32 off for the tests and the first bench: CuPy's default (CUPY_TF32 unset/0) and the libraries' override
TF32_OFF=(env CUPY_TF32=0 NVIDIA_TF32_OVERRIDE=0)

# ------------------------------------------------------------------ GPU tests
run_stage tests_gpu 150 "$LOGS/tests.log" \
    "${TF32_OFF[@]}" "$PY" -m pytest tests/test_gpu.py -q -rs -p no:cacheprovider

# ------------------------------------------------------------------ kernel profile
cat > "$WORK/profile.py" <<'EOF'
"""Where the time of each ZFNet convolution goes (float32, CUDA events, median of 5 after a warm-up)."""
import sys
import numpy as np
import cupy
from zfscratch.kernels import gpu
from zfscratch.kernels.reference import conv_output_size

N = int(sys.argv[1])
print(f"batch {N}, cupy {cupy.__version__}, TF32 {gpu.tf32_enabled()}")


def ms(fn, reps=5):
    fn()
    out = []
    for _ in range(reps):
        a, b = cupy.cuda.Event(), cupy.cuda.Event()
        a.record()
        fn()
        b.record()
        b.synchronize()
        out.append(cupy.cuda.get_elapsed_time(a, b))
    return float(np.median(out))


rng = cupy.random.default_rng(0)
print(f"{'layer':<6} {'im2col':>7} {'gemm':>7} {'TF/s':>5} {'fold':>6} {'dW':>7} {'TF/s':>5} {'dW/8':>7} {'dX':>7} "
      f"{'col2im':>7} | {'fwd':>7} {'bwd':>7}  (ms; dW/8: dW as 8 batched products summed)")
for name, c, f, k, s, p, h in (("conv1", 3, 96, 7, 2, 1, 224), ("conv2", 96, 256, 5, 2, 0, 55),
                               ("conv3", 256, 384, 3, 1, 1, 13), ("conv4", 384, 384, 3, 1, 1, 13),
                               ("conv5", 384, 256, 3, 1, 1, 13)):
    ho = conv_output_size(h, k, s, p)
    x = rng.standard_normal((N, c, h, h), dtype=np.float32)
    w = rng.standard_normal((f, c, k, k), dtype=np.float32)
    b = rng.standard_normal((f,), dtype=np.float32)
    dy = rng.standard_normal((N, f, ho, ho), dtype=np.float32)
    w2 = w.reshape(f, -1)
    cols = gpu._im2col(x, k, k, s, p, ho, ho)
    dyt = gpu._fold(dy)
    fl = 2.0 * f * w2.shape[1] * cols.shape[1]
    t = dict(im2col=ms(lambda: gpu._im2col(x, k, k, s, p, ho, ho)), gemm=ms(lambda: cupy.matmul(w2, cols)),
             fold=ms(lambda: gpu._fold(dy)), dw=ms(lambda: cupy.matmul(dyt, cols.T)),
             dx=ms(lambda: cupy.matmul(w2.T, dyt)))
    sp = 8 if N % 8 == 0 else 1
    t["dw8"] = ms(lambda: cupy.matmul(dyt.reshape(f, sp, -1).transpose(1, 0, 2),
                                      cols.reshape(cols.shape[0], sp, -1).transpose(1, 2, 0)).sum(axis=0))
    dcols = cupy.matmul(w2.T, dyt)
    dx = cupy.empty_like(x)
    t["col2im"] = ms(lambda: gpu._col2im(dcols, dx, k, k, s, p, ho, ho))
    del dcols, cols, dyt
    t["fwd"] = ms(lambda: gpu.conv2d_forward(x, w, b, s, p))
    t["bwd"] = ms(lambda: gpu.conv2d_backward(dy, x, w, s, p, need_dx=name != "conv1"))
    print(f"{name:<6} {t['im2col']:7.2f} {t['gemm']:7.2f} {fl / t['gemm'] / 1e9:5.1f} {t['fold']:6.2f} {t['dw']:7.2f} "
          f"{fl / t['dw'] / 1e9:5.1f} {t['dw8']:7.2f} {t['dx']:7.2f} {t['col2im']:7.2f} | {t['fwd']:7.2f} {t['bwd']:7.2f}")
    del x, dy, dx
for what, shape in (("pool1+norm1", (N, 96, 110, 110)), ("pool2+norm2", (N, 256, 26, 26))):
    x = rng.standard_normal(shape, dtype=np.float32)
    y, sw = gpu.maxpool_forward(x, 3, 2, True)
    yl, sc = gpu.lrn_forward(y, 5, 1e-4, 0.75, 2.0)
    print(f"{what}: pool fwd {ms(lambda: gpu.maxpool_forward(x, 3, 2, True)):.2f} bwd "
          f"{ms(lambda: gpu.maxpool_backward(y, sw, x.shape, 3, 2)):.2f}, lrn fwd "
          f"{ms(lambda: gpu.lrn_forward(y, 5, 1e-4, 0.75, 2.0)):.2f} bwd "
          f"{ms(lambda: gpu.lrn_backward(y, y, yl, sc, 5, 1e-4, 0.75, 2.0)):.2f}, relu fwd "
          f"{ms(lambda: gpu.relu_forward(x)):.2f} ms")
    del x, y, sw, yl, sc
EOF
run_stage profile 45 "$LOGS/profile.log" "${TF32_OFF[@]}" "$PY" "$WORK/profile.py" "$BATCH"

# ------------------------------------------------------------------ bench
cat > "$WORK/bench.py" <<'EOF'
import sys
tf32, json_path, batch, repeats = sys.argv[1] == "1", sys.argv[2], sys.argv[3], sys.argv[4]
import torch
torch.backends.cuda.matmul.allow_tf32 = tf32
torch.backends.cudnn.allow_tf32 = tf32
torch.backends.cudnn.benchmark = True
from zfscratch.kernels import gpu
print(f"TF32: torch matmul {torch.backends.cuda.matmul.allow_tf32}, cudnn {torch.backends.cudnn.allow_tf32}, "
      f"cupy {gpu.tf32_enabled()}", flush=True)
from zfscratch.cli import main
sys.exit(main(["bench", "--backend", "cupy", "--compare", "torch", "--model", "zfnet", "--size", "224",
               "--batch", batch, "--repeats", repeats, "--json", json_path]))
EOF
run_stage bench_tf32_off 110 "$LOGS/bench_tf32_off.log" \
    "${TF32_OFF[@]}" "$PY" "$WORK/bench.py" 0 "$WORK/bench_tf32_off.json" "$BATCH" "$REPEATS"

# ------------------------------------------------------------------ other cupy-parametrized tests
run_stage tests_other_cupy 60 "$LOGS/tests.log" \
    "${TF32_OFF[@]}" "$PY" -m pytest tests -q -rs -p no:cacheprovider -k cupy --ignore=tests/test_gpu.py

# ------------------------------------------------------------------ bench, TF32 on
run_stage bench_tf32_on 90 "$LOGS/bench_tf32_on.log" \
    env CUPY_TF32=1 TORCH_ALLOW_TF32_CUBLAS_OVERRIDE=1 "$PY" "$WORK/bench.py" 1 "$WORK/bench_tf32_on.json" "$BATCH" "$REPEATS"

# ------------------------------------------------------------------ compute-sanitizer
cat > "$WORK/sanitize.py" <<'EOF'
"""Every gpu kernel once on small odd shapes, float32 and float64 (for compute-sanitizer memcheck)."""
import numpy as np
import cupy
cupy.cuda.set_allocator(None)  # one cudaMalloc per array, so out-of-bounds accesses are seen
from zfscratch.kernels import gpu
rng = np.random.default_rng(0)
for dt in (np.float32, np.float64):
    d = lambda *s: cupy.asarray(rng.standard_normal(s).astype(dt))
    for k, s, p in ((7, 2, 1), (5, 2, 0), (3, 1, 1), (11, 4, 2)):
        x, w, b = d(3, 3, 23, 21), d(4, 3, k, k), d(4)
        y = gpu.conv2d_forward(x, w, b, s, p)
        gpu.conv2d_backward(cupy.ones_like(y), x, w, s, p)
        gpu.conv2d_backward_data(cupy.ones_like(y), w, x.shape, s, p)
    x = d(3, 5, 13, 11)
    for k, s, c in ((3, 2, True), (3, 2, False), (2, 2, True)):
        y, sw = gpu.maxpool_forward(x, k, s, c)
        gpu.maxpool_backward(cupy.ones_like(y), sw, x.shape, k, s)
    r = gpu.relu_forward(x)
    gpu.relu_backward(x, r)
    y, sc = gpu.lrn_forward(x, 5, 1e-4, 0.75, 2.0)
    gpu.lrn_backward(x, x, y, sc, 5, 1e-4, 0.75, 2.0)
    gpu.softmax_xent(d(5, 7), cupy.asarray([0, 6, 3, 1, 2]))
cupy.cuda.Device().synchronize()
print("sanitizer workload done")
EOF
if command -v compute-sanitizer >/dev/null 2>&1; then
    run_stage sanitizer 60 "$LOGS/sanitizer.log" \
        compute-sanitizer --tool memcheck --error-exitcode 9 "$PY" "$WORK/sanitize.py"
else
    echo "=== sanitizer: SKIPPED (compute-sanitizer not on PATH)" | tee -a "$LOGS/sanitizer.log"
    NAMES+=(sanitizer); STATUS+=("skipped: no compute-sanitizer"); TIMES+=(0)
fi

# ------------------------------------------------------------------ summary
SUMMARY="$LOGS/summary.txt"
{
    echo "zfscratch GPU check: $(date -u +%Y-%m-%dT%H:%M:%SZ), $((SECONDS - START))s in all"
    for i in "${!NAMES[@]}"; do
        printf '  %-18s %-40s %4ss\n' "${NAMES[$i]}" "${STATUS[$i]}" "${TIMES[$i]}"
    done
    "$PY" - "$WORK/bench_tf32_off.json" "$WORK/bench_tf32_on.json" "$LOGS/bench.json" <<'EOF'
import json, os, sys
off, on, merged = sys.argv[1:4]
out = {}
for label, path in (("tf32_off", off), ("tf32_on", on)):
    if not os.path.exists(path):
        print(f"  bench {label}: no result")
        continue
    with open(path) as f:
        res = json.load(f)
    out[label] = res
    n, t, s = res["network"], res.get("torch", {}), res.get("speedup", {})
    print(f"  bench {label}: zfnet 224 batch {res['config']['batch']}: step {n['step_ms']:.1f} ms "
          f"({n['step_img_s']:.0f} img/s), forward {n['fwd_ms']:.1f} ms; torch step {t.get('step_ms', float('nan')):.1f} ms, "
          f"forward {t.get('fwd_ms', float('nan')):.1f} ms")
    if s:
        verdict = ""
        if label == "tf32_off":
            verdict = "  target >= 0.70: " + ("MET" if s["step"] >= 0.7 else "NOT MET")
        print(f"    ratio torch/ours: step {s['step']:.2f}, forward {s['fwd']:.2f}{verdict}")
    a = res.get("agreement")
    if a:
        print(f"    agreement: logits rel {a['logits_max_rel_diff']:.2e}, loss diff {a['loss_diff']:.2e}, "
              f"grads rel {a['grads_max_rel_diff']:.2e} ({a['grads_worst_param']})")
    slow = sorted(res["layers"], key=lambda r: -(r["fwd_ms"] + r["bwd_ms"]))[:6]
    print("    slowest layers (fwd+bwd ms, torch): " + ", ".join(
        f"{r['name']} {r['fwd_ms'] + r['bwd_ms']:.2f} ({r.get('torch_fwd_ms', 0) + r.get('torch_bwd_ms', 0):.2f})"
        for r in slow))
if out:
    with open(merged, "w") as f:
        json.dump(out, f, indent=1, sort_keys=True)
EOF
} 2>&1 | tee "$SUMMARY"
rm -rf "$WORK"
exit 0
