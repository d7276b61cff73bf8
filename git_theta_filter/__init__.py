"""git-theta-filter: version PyTorch model files in plain Git, one tensor per object."""

__version__ = "0.1.0"
