import numpy as np
import torch
from PIL import Image

# Small on purpose: the gauntlet runs 8 notebooks, both sides, on 2 CPU cores in a few minutes, and
# some notebooks walk a whole dataset in the notebook process (embeddings, statistics). Fixed-size
# splits written for the real lengths (`random_split(train, [45000, 5000])`) are rescaled by the
# `random_split` wrapper in ../sitecustomize.py.
BANK = 512  # distinct images per dataset at most; item i is image i % BANK


class _Synthetic(torch.utils.data.Dataset):
    shape = (28, 28)  # H, W[, C]
    lengths = {"train": 600, "test": 200}  # real: 60000, 10000
    num_classes = 10

    def __init__(self, root=None, train=True, transform=None, target_transform=None, download=False, split=None, **kwargs):
        self.root = root
        self.train = train
        self.split = split or ("train" if train else "test")
        self.transform = transform
        self.target_transform = target_transform
        n = self.lengths.get(self.split, self.lengths["test"])
        rng = np.random.default_rng(abs(hash((type(self).__name__, self.split))) % 2**32)
        self.data = rng.integers(0, 256, size=(min(n, BANK),) + self.shape, dtype=np.uint8)
        self.targets = rng.integers(0, self.num_classes, size=n).tolist()
        self.classes = [f"class {i}" for i in range(self.num_classes)]
        self._n = n

    def __len__(self):
        return self._n

    def __getitem__(self, index):
        img = Image.fromarray(self.data[index % len(self.data)])
        target = self.targets[index]
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target


class MNIST(_Synthetic):
    def __init__(self, *args, **kwargs):
        super().__init__(*args, **kwargs)
        self.data = torch.from_numpy(self.data)  # torchvision keeps MNIST as a uint8 tensor
        self.targets = torch.tensor(self.targets)

    def __getitem__(self, index):
        img = Image.fromarray(self.data[index % len(self.data)].numpy(), mode="L")
        target = int(self.targets[index])
        if self.transform is not None:
            img = self.transform(img)
        if self.target_transform is not None:
            target = self.target_transform(target)
        return img, target


class FashionMNIST(MNIST):
    pass


class CIFAR10(_Synthetic):
    shape = (32, 32, 3)
    lengths = {"train": 500, "test": 200}  # real: 50000, 10000


class CIFAR100(CIFAR10):
    num_classes = 100


class STL10(_Synthetic):
    shape = (96, 96, 3)
    lengths = {"train": 200, "test": 200, "unlabeled": 500, "train+unlabeled": 700}  # real: 5000, 8000, 100000
