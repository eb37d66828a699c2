"""Exceptions that the CLI turns into one-line messages and exit codes."""


class MechdiffError(Exception):
    """Base class: a problem the user can fix; never shown with a traceback."""

    exit_code = 3


class InputError(MechdiffError):
    """Bad, unreadable, hostile or incompatible input, or an I/O failure (exit 3)."""

    exit_code = 3


class UsageError(MechdiffError):
    """Options that contradict each other or make no sense together (exit 2)."""

    exit_code = 2
