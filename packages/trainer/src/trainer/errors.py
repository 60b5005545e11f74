"""The one exception type that reaches users as a one-line message."""


class TrainerError(Exception):
    """A problem with the user's input or run directory; the CLI prints it on one line and exits 2."""
