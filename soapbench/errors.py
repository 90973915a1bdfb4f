"""User-facing errors: each message is one line naming the problem and how to fix it."""

# scripts/train.py's exit code for RunBusyError: drivers wait on it instead of counting a failure.
EXIT_BUSY = 3


class SoapbenchError(RuntimeError):
    """Bad input from the user (config, hyperparameter, data path). The CLI prints it as one line and exits 2."""


class ConfigError(SoapbenchError):
    """A config field has an invalid value; the message starts with the dotted field name."""


class RunBusyError(RuntimeError):
    """Another live process holds the run directory's lock. The CLI prints one line and exits 3."""


class RunInterrupted(RuntimeError):
    """The environment stopped a run (disk, permissions, W&B transport): it is resumable, not a result."""
