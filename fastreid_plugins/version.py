"""The package's version (a leaf: setup.py and the run header read it without importing torch)."""

__version__ = "0.1.0"
