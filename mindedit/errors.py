"""One base for every error mindedit reports to its user: bad input (a config key, a file, a value) or a step that
cannot go on. Each message names the file, key or value and what was expected; the CLI prints it as it is."""


class MindeditError(ValueError):
    pass
