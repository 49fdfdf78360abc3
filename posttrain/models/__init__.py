"""Model loading with contamination guards, and the tiny local models."""

from posttrain.models.loader import LoadedModel, load_model, preflight_model, resolve_device

__all__ = ["LoadedModel", "load_model", "preflight_model", "resolve_device"]
