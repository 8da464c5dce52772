"""Errors that reach the command line edge. Everything below the edge returns values or raises these."""


class TraindError(Exception):
    """A failure reported as one line, exit code 1."""

    exit_code = 1


class IllegalTransition(RuntimeError):
    """An event a lifecycle table has no edge for: a bug in the caller, never a user mistake.
    (The supervisor's states.transition is different by design: signals and messages arrive in any
    state, so a trigger that is not an edge there means "nothing happens" and returns None.)"""


class UsageError(TraindError):
    """Bad command line or bad input (names the file and the field), exit code 2."""

    exit_code = 2
