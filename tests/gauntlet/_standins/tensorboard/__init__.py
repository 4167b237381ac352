"""Stand-in for tensorboard, for `%load_ext tensorboard` and `%tensorboard --logdir ...` in notebooks.
`torch.utils.tensorboard` itself is replaced in sitecustomize.py."""

__version__ = "2.16+gauntlet"


def load_ipython_extension(ip):
    ip.register_magic_function(lambda line="": print(f"tensorboard stand-in: {line}"), "line", "tensorboard")
