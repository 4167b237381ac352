"""A value that accepts any use: the stand-in for plotting and table libraries whose output the
gauntlet never looks at (seaborn, pandas). Calls, attributes, items, arithmetic and `with` all
return another `Anything`; iterating yields nothing."""


class Anything:
    def __init__(self, name="anything"):
        object.__setattr__(self, "_name", name)

    def __call__(self, *args, **kwargs):
        return Anything(self._name + "()")

    def __getattr__(self, attr):
        if attr.startswith("__") and attr.endswith("__"):
            raise AttributeError(attr)
        return Anything(f"{self._name}.{attr}")

    def __setattr__(self, attr, value):
        pass

    def __getitem__(self, key):
        return Anything(f"{self._name}[...]")

    def __setitem__(self, key, value):
        pass

    def __delitem__(self, key):
        pass

    def __iter__(self):
        return iter(())

    def __len__(self):
        return 0

    def __bool__(self):
        return False

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        return False

    def __repr__(self):
        return f"<stand-in {self._name}>"

    def keys(self):
        return []

    def _op(self, *args):
        return Anything(self._name)

    __add__ = __radd__ = __sub__ = __rsub__ = __mul__ = __rmul__ = __truediv__ = __rtruediv__ = _op
    __eq__ = __ne__ = __lt__ = __le__ = __gt__ = __ge__ = _op
    __hash__ = object.__hash__


def module_getattr(prefix):
    def __getattr__(name):
        if name.startswith("__"):
            raise AttributeError(name)
        return Anything(f"{prefix}.{name}")

    return __getattr__
