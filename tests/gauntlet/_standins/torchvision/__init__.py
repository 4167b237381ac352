"""Stand-in for torchvision: the few names the gauntlet's notebooks use, offline and CPU-only.

Datasets have their real shapes but a few hundred items (1% of the real lengths), random images,
so nothing is downloaded, building one is instant and walking one takes a moment; fixed-size splits
written for the real lengths (`random_split(train, [45000, 5000])`) are rescaled to the stand-in's
length by the gauntlet's sitecustomize. Transforms are light callables on PIL images and
tensors. Models are small networks with the attribute names notebooks rewire (`conv1`, `maxpool`,
`fc`); no weights are ever loaded.
"""

from torchvision import datasets, models, ops, transforms, utils  # noqa: F401

__version__ = "0.0+gauntlet"
