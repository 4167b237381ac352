"""Stand-in for torchvision: the few names the gauntlet's notebooks use, offline and CPU-only.

Datasets have their real lengths and shapes (notebooks split them with fixed sizes such as
`random_split(train, [45000, 5000])`) but make their images from a small random bank, so nothing
is downloaded and building one is instant. Transforms are light callables on PIL images and
tensors. Models are small networks with the attribute names notebooks rewire (`conv1`, `maxpool`,
`fc`); no weights are ever loaded.
"""

from torchvision import datasets, models, ops, transforms, utils  # noqa: F401

__version__ = "0.0+gauntlet"
