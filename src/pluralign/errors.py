"""The errors pluralign raises for bad input (config, data, cache paths, command-line use).

Every one names what is wrong (file, row, field or key) and what was expected. The command line
prints them as one line and exits with status 2; anything else is a bug and keeps its traceback.
"""


class PluralignError(ValueError):
    """Bad input from the user: a config key, a data row, a path. Printed as one line by the CLI."""


def one_line(error: BaseException) -> str:
    """The error's message on one line (embedded newlines, e.g. from a library, become ' | ')."""
    return " | ".join(part.strip() for part in str(error).splitlines() if part.strip())
