"""One exception type for bad user input, so entry points can print one line instead of a traceback."""


class InputError(ValueError):
    """Bad input data or configuration; the message names what is wrong and where."""
