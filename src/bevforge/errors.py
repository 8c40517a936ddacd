"""Errors about what a user gave bevforge: a file, a setting or a checkpoint that cannot be used as given.

Every such error derives from :class:`InputError`; its message names the file or the setting and the fix.
The command line (``cli/main.py``) prints it as one line, ``error: <message>``, and exits with status 2;
any other exception is a bug and keeps its traceback. Each module raises its own subclass (also a
``ValueError`` or an ``OSError``, as before, for callers that catch those).
"""

from __future__ import annotations


class InputError(Exception):
    """Bad input; ``str(err)`` names the file or setting and how to fix it."""


class CheckpointError(InputError, ValueError):
    """A checkpoint is missing, damaged or of the wrong kind (training's and evaluation's loaders)."""


__all__ = ["CheckpointError", "InputError"]
