"""Errors raised for bad user input (the CLI prints them as one line and exits non-zero) and warnings about the
user's data (the CLI prints them as one ``warning:`` line each)."""


class HPNInputError(ValueError):
    """Bad input data or arguments. The message names the offending file and the problem in one line."""


class HPNWarning(UserWarning):
    """Something about the user's data that needs a look; the message names the file. ``nnunet-hpn`` prints each as
    one ``warning: <message>`` line on stderr."""
