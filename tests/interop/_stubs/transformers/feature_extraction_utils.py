"""Stand-in: mosaicml-streaming's loader imports this name at import time."""


class BatchFeature(dict):
    pass
