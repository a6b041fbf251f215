"""Subcommands of the ``zfscratch`` CLI, one module per group (see :mod:`zfscratch.cli`)."""
