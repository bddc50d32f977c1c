"""One exception for every bad input: the CLI prints its message on one line and exits 2."""


class EvalError(Exception):
    """Bad input or an impossible request, explained in one line that names the file, item or flag."""

    exit_code = 2
