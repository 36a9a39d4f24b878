"""Errors every layer may raise; the command line maps them to exit codes (``medrecon.cli``).

They live on the ground floor so that the library never imports the CLI: a notebook catches
``medrecon.errors.UsageError`` the same way ``medrecon <command>`` turns it into exit code 2.
"""

from __future__ import annotations


class UsageError(Exception):
    """A problem with what the user asked for (bad option value, missing input, a refused file): exit code 2,
    one line, no traceback."""
