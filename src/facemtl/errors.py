"""The one exception type for mistakes a user can fix (bad arguments, files, configs).

The command line prints it as one line (``facemtl: error: ...``) with no traceback;
anything else is a bug and keeps its traceback.
"""


class FacemtlError(Exception):
    """A user-facing error: the message says what was wrong and what was expected."""
