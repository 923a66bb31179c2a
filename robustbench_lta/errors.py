"""The one exception type meant for users.

Anything raised as :class:`UserError` is a problem with the user's input (a bad config key, a
missing file, an unknown model name). The CLI prints its message as one line and exits with
code 2; every other exception is a bug and keeps its traceback under ``--debug``.
"""

from __future__ import annotations


class UserError(Exception):
    """Bad input from the user: the message names what is wrong and how to fix it."""
