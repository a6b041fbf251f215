"""Argument helpers shared by the subcommands (not a subcommand: the CLI skips modules named ``_*``)."""
from __future__ import annotations

BACKEND_CHOICES = ("auto", "numpy", "numba", "cupy")


def add_backend_arg(parser):
    """``--backend {auto,numpy,numba,cupy}`` (default: ZFSCRATCH_BACKEND or auto)."""
    parser.add_argument("--backend", choices=BACKEND_CHOICES, default=None,
                        help="compute backend (default: $ZFSCRATCH_BACKEND or auto = cupy, else numba, else numpy)")


def add_distributed_arg(p):
    """``--distributed``: run over the MPI world (``mpirun -n K zfscratch ...``)."""
    p.add_argument("--distributed", action="store_true", default=None,
                   help="run over the MPI world (start with mpirun -n K; detected without the flag when an MPI "
                        "launcher starts several processes; needs the [distributed] extra)")


def world_of(args):
    """The MPI world (or one process) for a command's ``--distributed`` flag."""
    from zfscratch.distributed import get_world
    return get_world(True if getattr(args, "distributed", None) else None)
