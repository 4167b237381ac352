"""nbrefactor: find and fix what stops a Lightning notebook from training on several GPUs."""

__version__ = "0.1.0"


def load_ipython_extension(ipython) -> None:
    """`%load_ext nbrefactor`: guard the fork launch points in this kernel (nbrefactor.kernel)."""
    from nbrefactor.kernel import ext

    ext.load(ipython)


def unload_ipython_extension(ipython) -> None:
    from nbrefactor.kernel import ext

    ext.unload(ipython)
