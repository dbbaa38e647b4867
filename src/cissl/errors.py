"""Errors that the command line reports in one line, without a traceback (exit code 2)."""


class CisslError(Exception):
    """Base class of every error caused by the user's input (config, data files, checkpoints).

    Its text is always one line: line breaks that come in with the input (a key or a file name) are
    shown escaped."""

    def __str__(self) -> str:
        return super().__str__().replace("\r", "\\r").replace("\n", "\\n")


class ConfigError(CisslError):
    """A config key is unknown, has the wrong type or is out of range."""


class DataError(CisslError):
    """A data file is missing, corrupt, or the requested split does not fit the data."""


class PrintedByAnotherRank(CisslError):
    """A DDP rank's copy of an error another rank prints (rank 0; before the ranks have joined their
    process group, this node's local rank 0): the command line prints it once."""


def for_this_rank(error: CisslError, prints_it: bool) -> CisslError:
    """The error to raise on a rank that met ``error`` with the others: itself where this rank prints it,
    else a :class:`PrintedByAnotherRank` with its message."""
    return error if prints_it or isinstance(error, PrintedByAnotherRank) else PrintedByAnotherRank(str(error))


class CheckpointError(CisslError):
    """A checkpoint or run directory is missing, unreadable or does not match the config."""
