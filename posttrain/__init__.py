"""posttrain: what does post-training add to a base model, measured without fooling ourselves."""

__version__ = "0.1.0"
