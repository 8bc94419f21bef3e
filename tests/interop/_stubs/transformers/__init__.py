"""Stand-in: mosaicml-streaming's loader imports these names at import time."""


class BatchEncoding(dict):
    pass


class BatchFeature(dict):
    pass
