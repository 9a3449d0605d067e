"""Typed errors raised by the science library; the service maps them onto its own error tree."""


class UnlearningError(Exception):
    """Base class of every error the library raises on purpose."""


class InvalidInputError(UnlearningError, ValueError):
    """An input (QA list, image, configuration) cannot be used; the message says what to fix."""


class IncompatibleModuleError(UnlearningError):
    """A trained module does not belong to the base model it is being loaded onto."""


class ArtifactIntegrityError(UnlearningError):
    """An artifact on disk does not match its recorded checksum or format version."""


class WorldNotBuiltError(UnlearningError):
    """The reference world has not been built in the given directory."""


class TimeBudgetExceeded(UnlearningError):
    """A computation given a `Deadline` ran past it; it stopped between two steps."""


class UnsupportedModelError(InvalidInputError):
    """A model directory cannot be served: not a checkpoint, an architecture Lethe has no backbone for, or broken."""
