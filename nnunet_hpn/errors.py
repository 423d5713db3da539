"""Errors raised for bad user input: the CLI prints them as one line and exits non-zero."""


class HPNInputError(ValueError):
    """Bad input data or arguments. The message names the offending file and the problem in one line."""
