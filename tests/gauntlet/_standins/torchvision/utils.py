import math

import torch


def make_grid(tensor, nrow=8, padding=2, normalize=False, value_range=None, scale_each=False, pad_value=0.0, **kwargs):
    if isinstance(tensor, (list, tuple)):
        tensor = torch.stack(list(tensor))
    if tensor.dim() == 3:
        tensor = tensor.unsqueeze(0)
    if tensor.size(1) == 1:
        tensor = tensor.expand(-1, 3, -1, -1)
    if normalize:
        lo, hi = value_range or (tensor.min(), tensor.max())
        tensor = (tensor - lo) / max(float(hi - lo), 1e-5)
    n, c, h, w = tensor.shape
    cols = min(nrow, n)
    rows = math.ceil(n / cols)
    grid = tensor.new_full((c, rows * (h + padding) + padding, cols * (w + padding) + padding), pad_value)
    for k in range(n):
        r, q = divmod(k, cols)
        top, left = r * (h + padding) + padding, q * (w + padding) + padding
        grid[:, top : top + h, left : left + w] = tensor[k]
    return grid


def save_image(tensor, fp, **kwargs):
    pass
