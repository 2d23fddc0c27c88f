"""Exception classes. Every error a user can cause is a ``FlowrbcError`` (a ``ValueError``):
the CLI prints its message as one line and exits 1, without a traceback."""


class FlowrbcError(ValueError):
    """Base class for errors caused by input: a bad file, a bad option, a missing step."""


class FCSError(FlowrbcError):
    """An FCS file that cannot be read correctly. The message names the file."""


class CohortError(FlowrbcError):
    """A cohort file or clinical table that is malformed or inconsistent."""


class CheckpointError(FlowrbcError):
    """A model checkpoint that is missing, truncated, tampered with or incompatible."""


class ChannelError(FlowrbcError):
    """A sample that lacks the channels a model or step needs."""
