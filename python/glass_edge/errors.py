"""Errors a user can fix: every command reports them as one line and exits with code 1."""


class UserError(Exception):
    """Bad input (missing or corrupt file, wrong metadata, out-of-range option, ...)."""
