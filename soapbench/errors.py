"""User-facing errors: each message is one line naming the problem and how to fix it."""


class SoapbenchError(RuntimeError):
    """Bad input from the user (config, hyperparameter, data path). The CLI prints it as one line and exits 2."""


class ConfigError(SoapbenchError):
    """A config field has an invalid value; the message starts with the dotted field name."""
