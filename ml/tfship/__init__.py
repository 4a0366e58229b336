"""tfship: from data to a verified model in TensorFlow Serving, and keep it fresh."""

__version__ = "0.1.0"
