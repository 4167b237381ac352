"""Loaded at start-up by every Python that has the gauntlet's stand-ins on PYTHONPATH (the
`nbrefactor run` process and the kernel it starts, which inherits the environment).

- Downloads fail the way a missing file on the server does (`HTTPError`), which the notebooks
  catch ("Something went wrong..."), instead of `URLError` from the missing network.
- `torch.utils.tensorboard` and `tqdm.notebook` are replaced by light stand-ins: TensorBoard and
  ipywidgets are not installed, and the notebooks only log pictures or show progress with them
  (`tensorboardX/` beside this file is the writer that does nothing).
- `IPython.display.set_matplotlib_formats`, which IPython 8 removed and the older notebooks import,
  is put back (as matplotlib_inline's).
- `torch.utils.data.random_split` rescales whole-number lengths that do not add up to the dataset's
  length: the stand-in datasets (torchvision/datasets.py) hold a few hundred items, and notebooks
  split them with sizes written for the real ones (`[45000, 5000]` of 500 items: `[450, 50]`).
  The notebooks' code is unchanged; only the sizes shrink with the data.
"""

import importlib.abc
import importlib.machinery
import sys
import types
import urllib.error
import urllib.request


def _offline(url, *args, **kwargs):
    url = getattr(url, "full_url", url)
    raise urllib.error.HTTPError(url, 404, "offline: the nbrefactor gauntlet has no network", None, None)


urllib.request.urlretrieve = _offline
urllib.request.urlopen = _offline


def _tensorboard(module):
    from tensorboardX import SummaryWriter  # the stand-in next to this file

    module.__path__ = []  # a package, for `torch.utils.tensorboard.summary`
    module.SummaryWriter = SummaryWriter


def _tensorboard_summary(module):
    from tensorboardX.summary import hparams

    module.hparams = hparams


def _tqdm_notebook(module):
    from tqdm.std import tqdm, trange

    module.tqdm = tqdm
    module.trange = trange


_STANDINS = {
    "torch.utils.tensorboard": _tensorboard,
    "torch.utils.tensorboard.summary": _tensorboard_summary,
    "tqdm.notebook": _tqdm_notebook,
}


def _ipython_display(module):
    def set_matplotlib_formats(*formats, **kwargs):
        from matplotlib_inline.backend_inline import set_matplotlib_formats as real

        real(*formats, **kwargs)

    module.set_matplotlib_formats = set_matplotlib_formats


def rescale(lengths, total):
    """Whole-number split `lengths` written for another dataset size, rescaled to add up to `total`
    (each non-zero part keeps at least one item); anything else (fractions, lengths that already
    add up) is returned as it is."""
    import operator

    try:
        sizes = [operator.index(n) for n in lengths]
    except TypeError:
        return lengths
    whole = sum(sizes)
    if not sizes or whole == total or whole <= 0 or min(sizes) < 0 or total < sum(1 for n in sizes if n):
        return lengths
    scaled = [n * total // whole for n in sizes]
    largest = sorted(range(len(sizes)), key=lambda i: -sizes[i])
    for i in largest[: total - sum(scaled)]:
        scaled[i] += 1
    for i, n in enumerate(sizes):
        if n and not scaled[i]:
            scaled[i] = 1
            scaled[max(range(len(scaled)), key=scaled.__getitem__)] -= 1
    return scaled


def _torch_dataset(module):
    real = module.random_split

    def random_split(dataset, lengths, *args, **kwargs):
        return real(dataset, rescale(lengths, len(dataset)), *args, **kwargs)

    random_split.__wrapped__ = real
    random_split.__doc__ = real.__doc__
    module.random_split = random_split  # before torch.utils.data imports the name from here


_AFTER_IMPORT = {  # real modules, amended once loaded
    "IPython.display": _ipython_display,
    "torch.utils.data.dataset": _torch_dataset,
}


class _Finder(importlib.abc.MetaPathFinder, importlib.abc.Loader):
    def find_spec(self, name, path=None, target=None):
        if name in _STANDINS:
            return importlib.machinery.ModuleSpec(name, self)
        if name in _AFTER_IMPORT:
            spec = importlib.machinery.PathFinder.find_spec(name, path)
            if spec is not None and spec.loader is not None:
                spec.loader = _Amend(spec.loader, _AFTER_IMPORT[name])
            return spec
        return None

    def create_module(self, spec):
        return types.ModuleType(spec.name)

    def exec_module(self, module):
        _STANDINS[module.__name__](module)


class _Amend(importlib.abc.Loader):
    def __init__(self, loader, amend):
        self.loader, self.amend = loader, amend

    def create_module(self, spec):
        return self.loader.create_module(spec)

    def exec_module(self, module):
        self.loader.exec_module(module)
        self.amend(module)


sys.meta_path.insert(0, _Finder())
