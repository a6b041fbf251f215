"""The ``zfscratch`` command line.

Subcommands live in :mod:`zfscratch.commands`: every module there defines ``register(subparsers)``
(adding its parsers with ``set_defaults(func=handler)``) and an ``ORDER`` number for ``--help``.
Handlers return an exit status. Bad input raises :class:`~zfscratch.errors.UserError`, printed here as
one line (``zfscratch: error: ...``) with exit status 2 and no traceback.
"""
from __future__ import annotations

import argparse
import errno
import os
import importlib
import pkgutil
import sys

from zfscratch import __version__
from zfscratch.backend import resolve_backend  # noqa: F401  (re-exported for older callers)
from zfscratch.commands._args import BACKEND_CHOICES, add_backend_arg, add_distributed_arg, world_of  # noqa: F401
from zfscratch.errors import UserError


class _Parser(argparse.ArgumentParser):
    """argparse with our exit status (2) and one-line errors."""

    def error(self, message):
        self.exit(2, f"{self.prog}: error: {message}\n")


def build_parser():
    from zfscratch import commands
    parser = _Parser(prog="zfscratch",
                     description="ZFNet and its DeconvNet (Zeiler & Fergus 2014) from scratch: train, "
                                 "visualize, run the paper's experiments.")
    parser.add_argument("--version", action="version", version=f"zfscratch {__version__}")
    sub = parser.add_subparsers(dest="command", metavar="COMMAND", parser_class=_Parser)
    mods = [importlib.import_module(f"{commands.__name__}.{m.name}")
            for m in pkgutil.iter_modules(commands.__path__) if not m.name.startswith("_")]
    for mod in sorted(mods, key=lambda m: (getattr(m, "ORDER", 100), m.__name__)):
        mod.register(sub)
    return parser


def _silence_stdout():
    try:
        devnull = os.open(os.devnull, os.O_WRONLY)
        os.dup2(devnull, sys.stdout.fileno())
        os.close(devnull)
    except (OSError, ValueError):
        pass


def main(argv=None):
    """Entry point of the ``zfscratch`` console script. Returns the exit status."""
    parser = build_parser()
    args = parser.parse_args(argv)
    if not getattr(args, "func", None):
        parser.print_help()
        return 2
    from zfscratch import distributed
    try:
        return int(args.func(args) or 0)
    except UserError as e:
        # several MPI ranks: one line on rank 0 (errors all ranks agreed on), or one line from the
        # failing rank, which then exits at once so that the launcher stops the others
        status = distributed.exit_on_error(e, 2)
        if status is not None:
            return status
        print(f"zfscratch: error: {e}", file=sys.stderr)
        return 2
    except KeyboardInterrupt:
        print("zfscratch: interrupted", file=sys.stderr)
        return 130
    except BrokenPipeError:
        # ``zfscratch ... | head``: the reader left; say nothing more (and keep Python's final flush of
        # stdout from printing a traceback of its own)
        _silence_stdout()
        return 141
    except OSError as e:
        if e.errno not in (errno.ENOSPC, errno.EDQUOT, errno.EROFS, errno.EACCES):
            # any other OSError is a failure like any exception: under MPI it must stop every rank
            if distributed.current() is not None:
                distributed.exit_on_error(e, 1)
            raise
        print(f"zfscratch: error: {e.filename or 'write'}: {e.strerror}", file=sys.stderr)
        return 2
    except MemoryError:
        print("zfscratch: error: out of memory (try a smaller --batch or input size)", file=sys.stderr)
        return 2
    except Exception as e:
        if distributed.current() is not None:
            distributed.exit_on_error(e, 1)
        raise


if __name__ == "__main__":  # pragma: no cover
    sys.exit(main())
