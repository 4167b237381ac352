"""Loaded at start-up by every Python that has the gauntlet's stand-ins on PYTHONPATH (the
`nbrefactor run` process and the kernel it starts, which inherits the environment).

- Downloads fail the way a missing file on the server does (`HTTPError`), which the notebooks
  catch ("Something went wrong..."), instead of `URLError` from the missing network.
- `torch.utils.tensorboard` and `tqdm.notebook` are replaced by light stand-ins: TensorBoard and
  ipywidgets are not installed, and the notebooks only log pictures or show progress with them
  (`tensorboardX/` beside this file is the writer that does nothing).
- `IPython.display.set_matplotlib_formats`, which IPython 8 removed and the older notebooks import,
  is put back (as matplotlib_inline's).
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


_AFTER_IMPORT = {"IPython.display": _ipython_display}  # real modules, amended once loaded


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
