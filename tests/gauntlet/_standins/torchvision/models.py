from torch import nn


class _SmallResNet(nn.Module):
    """Not a ResNet: the same attribute names (`conv1`, `bn1`, `maxpool`, `layer1..4`, `fc`) and
    the same feature width (512), with a fraction of the work."""

    width = 512

    def __init__(self, num_classes=1000, **kwargs):
        super().__init__()
        self.conv1 = nn.Conv2d(3, 64, kernel_size=7, stride=2, padding=3, bias=False)
        self.bn1 = nn.BatchNorm2d(64)
        self.relu = nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(kernel_size=3, stride=2, padding=1)
        # Cheap on CPU even when a notebook rewires conv1 to stride 1 and drops the maxpool (CIFAR10
        # at full resolution): layer1 halves the resolution and narrows to 16 channels at once.
        self.layer1 = nn.Sequential(nn.Conv2d(64, 16, 3, stride=2, padding=1), nn.ReLU())
        self.layer2 = nn.Sequential(nn.Conv2d(16, 32, 3, stride=2, padding=1), nn.ReLU())
        self.layer3 = nn.Sequential(nn.Conv2d(32, 64, 3, stride=2, padding=1), nn.ReLU())
        self.layer4 = nn.Sequential(nn.Conv2d(64, self.width, 1), nn.ReLU())
        self.avgpool = nn.AdaptiveAvgPool2d((1, 1))
        self.fc = nn.Linear(self.width, num_classes)

    def forward(self, x):
        x = self.maxpool(self.relu(self.bn1(self.conv1(x))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(self.avgpool(x).flatten(1))


def resnet18(pretrained=False, weights=None, num_classes=1000, **kwargs):
    return _SmallResNet(num_classes=num_classes)


resnet34 = resnet18


resnet50 = resnet18


def vgg16(*args, **kwargs):
    raise NotImplementedError("torchvision.models.vgg16 is not part of the gauntlet's torchvision stand-in")


class VGG16_Weights:
    DEFAULT = IMAGENET1K_V1 = IMAGENET1K_FEATURES = None
