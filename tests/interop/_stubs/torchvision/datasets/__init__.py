"""Stand-in: only the name mosaicml-streaming imports."""


class VisionDataset:
    def __init__(self, root=None, transforms=None, transform=None, target_transform=None):
        self.root = root
        self.transform = transform
        self.target_transform = target_transform


class CIFAR:
    pass
