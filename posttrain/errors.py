"""Errors a user can act on. The entrypoint prints their message and exits with status 2."""


class PosttrainError(RuntimeError):
    """Base for errors whose message says what to change (no traceback is shown)."""


class ContaminationError(PosttrainError):
    """A chat template or chat special tokens would reach a base model."""


class ModelUnavailable(PosttrainError):
    """Weights, a pinned revision, an adapter or a GPU is missing."""


class NotBuiltYet(PosttrainError):
    """A stage or option exists in the config but is not implemented yet."""
