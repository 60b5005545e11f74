"""The one exception type that reaches users as a one-line message."""


class FeatstoreError(Exception):
    """A problem with the user's input or store; the CLI prints it on one line and exits 2."""
