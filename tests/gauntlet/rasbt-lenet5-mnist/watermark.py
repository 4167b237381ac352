"""Stand-in for the `watermark` IPython extension (%watermark prints package versions)."""


def load_ipython_extension(ip):
    ip.register_magic_function(lambda line="": print(f"watermark stand-in: {line}"), "line", "watermark")
