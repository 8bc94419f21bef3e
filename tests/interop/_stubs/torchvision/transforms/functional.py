"""Stand-in: mosaicml-streaming imports to_tensor but our tests never call it."""


def to_tensor(pic):
    raise NotImplementedError("torchvision stand-in")
