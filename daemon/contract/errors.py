"""Errors that reach the command line edge. Everything below the edge returns values or raises these."""


class TraindError(Exception):
    """A failure reported as one line, exit code 1."""

    exit_code = 1


class UsageError(TraindError):
    """Bad command line or bad input (names the file and the field), exit code 2."""

    exit_code = 2
