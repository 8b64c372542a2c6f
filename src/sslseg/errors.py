"""The one exception a user can fix.

:class:`UserError` is raised at the edges (command line, config, data readers, checkpoints) for
input the person running sslseg can correct: a missing file, a misspelt key, a value out of range,
data with nothing to learn. Its message is one line naming the file or key and what is wrong.

The command line prints a ``UserError`` as that one line and exits 2 (``--debug`` shows the
traceback and its chain). Every other exception keeps its traceback: a ``ValueError`` from torch
or numpy is a bug to report, not bad input. ``UserError`` subclasses ``ValueError`` so that code
that validates by catching ``ValueError`` (a reader skipping an unreadable file) still catches it.
"""


class UserError(ValueError):
    """Bad input the user can fix; one line, shown without a traceback by the command line."""
