"""KTT: hierarchical text classification, tracked end to end."""
__version__ = "0.1.0"
