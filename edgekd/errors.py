"""The one error family. The CLI catches `EdgeKDError` alone and prints its message on one line."""


class EdgeKDError(Exception):
    """A problem the user can fix; the message says what and how."""


class RecipeError(EdgeKDError):
    """A recipe or override that does not validate."""


class TargetError(EdgeKDError):
    """An unknown or malformed target profile."""


class InputError(EdgeKDError):
    """A missing, unreadable or corrupt file, or data that does not fit the model."""


class ParityError(EdgeKDError):
    """An exported model that does not reproduce its PyTorch model; `measured`: what the check found."""

    def __init__(self, message: str, measured: dict | None = None):
        super().__init__(message)
        self.measured = measured or {}


class BudgetError(EdgeKDError):
    """A model that does not fit the target's budget (memory, latency)."""
