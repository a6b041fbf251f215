"""Shared helpers, one module per concern: files (atomic writes, safe paths), jsonio (JSON of results),
progress (tqdm bars), numerics (softmax), figures (matplotlib Agg figures), threads (BLAS/Numba threads).

Nothing here imports the rest of zfscratch at module level: every layer may use these helpers.
"""
