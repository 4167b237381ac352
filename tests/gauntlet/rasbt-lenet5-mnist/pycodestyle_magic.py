"""Stand-in for the `pycodestyle_magic` IPython extension (%flake8_on lints each cell)."""


def load_ipython_extension(ip):
    for name in ("flake8_on", "flake8_off", "pycodestyle_on", "pycodestyle_off"):
        ip.register_magic_function(lambda line="": None, "line", name)
