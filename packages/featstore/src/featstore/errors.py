"""The one exception type that reaches users as a one-line message, and how system errors read."""

import errno

NO_SPACE = (errno.ENOSPC, errno.EFBIG, errno.EDQUOT)
NO_PERMISSION = (errno.EACCES, errno.EPERM, errno.EROFS)


class FeatstoreError(Exception):
    """A problem with the user's input or store; the CLI prints it on one line and exits 2."""


def describe_os_error(error: OSError) -> str:
    where = f"{error.filename}: " if error.filename else ""
    what = error.strerror or str(error) or type(error).__name__
    if error.errno in NO_SPACE:
        return f"{where}{what}; what was complete is kept: free some space and re-run"
    if error.errno in NO_PERMISSION:
        return f"{where}{what}; check that you may write there"
    return f"{where}{what}"
