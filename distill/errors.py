"""User-facing errors: one sentence naming the key or file and what is allowed."""


class DistillError(Exception):
    """A mistake in the user's config, data or models, reported as one sentence and exit code 2."""


class ConfigError(DistillError):
    """An invalid or inconsistent config value."""


class DataError(DistillError):
    """A missing or malformed data folder, file or row."""


class TrainingError(DistillError):
    """Training cannot go on (a non-finite loss): the step and the cause in one sentence."""
