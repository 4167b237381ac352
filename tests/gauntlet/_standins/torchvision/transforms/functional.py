from PIL import Image

from torchvision.transforms import _resize, _to_tensor  # noqa: F401


def resize(img, size, *args, **kwargs):
    return _resize(img, size)


def to_tensor(pic):
    return _to_tensor(pic)


def to_pil_image(pic, mode=None):
    arr = (pic.detach().clamp(0, 1) * 255).byte().permute(1, 2, 0).squeeze(-1).numpy()
    return Image.fromarray(arr, mode=mode)
