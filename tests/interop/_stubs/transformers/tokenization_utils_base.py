"""Stand-in: mosaicml-streaming's loader imports this name at import time."""


class BatchEncoding(dict):
    pass
