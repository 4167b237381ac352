"""Stand-in for pandas: the notebooks only read Lightning's metrics.csv back to plot it. The file
must be there, as pandas would insist (FileNotFoundError otherwise): a notebook that reads the
logger's folder after a forked fit (NBR501) fails here as it would with pandas."""
from _anything import Anything, module_getattr

__version__ = "0.0+gauntlet"
__getattr__ = module_getattr("pandas")


def read_csv(path, *args, **kwargs):
    with open(path, encoding="utf-8") as f:
        f.read(1)
    return Anything(f"read_csv({path!r})")
