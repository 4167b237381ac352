"""nbrefactor: find and fix what stops a Lightning notebook from training on several GPUs."""

__version__ = "0.1.0"
