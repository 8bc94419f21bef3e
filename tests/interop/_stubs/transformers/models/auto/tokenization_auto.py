"""Stand-in: mosaicml-streaming's text datasets import this name at import time."""


class AutoTokenizer:
    @classmethod
    def from_pretrained(cls, *args, **kwargs):
        raise NotImplementedError("transformers stand-in")
