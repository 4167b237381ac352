"""Notebook files in, notebook files out: reading, joining cells into one module, writing back."""
