"""pysmpc: secure multi-party computation for private machine learning."""

__version__ = "0.1.0"
__all__ = ["__version__"]
