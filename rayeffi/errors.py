"""The one exception type for mistakes a user can fix.

Anything raised as :class:`UserError` reaches the command line as a single line
``error: ...`` and exit status 2, with no traceback. Everything else is a bug in
rayeffi (or in the user's model code) and keeps its traceback.
"""

from __future__ import annotations


class UserError(Exception):
    """A bad recipe, override, dataset or combination: say what and how to fix it."""
