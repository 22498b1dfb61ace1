"""attnlab: the attention family beyond the basic transformer."""
__version__ = "0.1.0"
