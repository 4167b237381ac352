"""Stand-in for seaborn (the gauntlet does not look at plots): every name is an `Anything`."""
from _anything import module_getattr

__version__ = "0.0+gauntlet"
__getattr__ = module_getattr("seaborn")
