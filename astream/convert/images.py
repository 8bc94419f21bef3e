"""Image datasets as users keep them on disk: class folders and segmentation pairs.

Image bytes are stored as they are on disk (no decode, no re-encode); the column's encoding is
``jpeg`` or ``png`` when every image looked at is one, else ``bytes``.
"""

from __future__ import annotations

import os
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from astream.convert.base import Source

__all__ = ["IMAGE_EXTENSIONS", "ImageFolder", "SegmentationPairs"]

#: File suffixes taken as images (as torchvision's ``IMG_EXTENSIONS``, lower case).
IMAGE_EXTENSIONS = frozenset(
    {".jpg", ".jpeg", ".png", ".ppm", ".bmp", ".pgm", ".tif", ".tiff", ".webp"}
)


def _images_under(root: Path) -> list[Path]:
    found = [
        Path(dirpath) / name
        for dirpath, _dirs, files in os.walk(root, followlinks=True)
        for name in files
        if Path(name).suffix.lower() in IMAGE_EXTENSIONS
    ]
    return sorted(found)


@dataclass(frozen=True)
class ImageFolder(Source):
    """An image classification folder laid out as torchvision's ``ImageFolder`` reads it.

    ``root/<class>/**/<image>``: classes are the sorted subfolder names and a sample's label
    is its class's position among them (ImageNet's ``train/n01440764/...``, CIFAR-10 written
    as PNG folders). Columns: ``image`` (the file's bytes), ``label`` (int) and, with
    ``class_names``, ``class_name`` (str).

    :param root: the folder holding one subfolder per class.
    :param class_names: also store each sample's class folder name.
    """

    root: Path
    class_names: bool = False

    def classes(self) -> list[str]:
        """The class names, in label order.

        :raises FileNotFoundError: when ``root`` is not a folder or holds no class folder.
        """
        root = Path(self.root)
        if not root.is_dir():
            raise FileNotFoundError(f"image folder {root} does not exist")
        found = sorted(entry.name for entry in root.iterdir() if entry.is_dir())
        if not found:
            raise FileNotFoundError(f"image folder {root} has no class subfolders")
        return found

    def units(self) -> list[Any]:
        root = Path(self.root)
        units: list[tuple[str, int, str]] = []
        for label, name in enumerate(self.classes()):
            units.extend((str(path), label, name) for path in _images_under(root / name))
        return units

    def read(self, unit: Any) -> Iterator[dict[str, Any]]:
        path, label, name = unit
        sample: dict[str, Any] = {"image": Path(path).read_bytes(), "label": label}
        if self.class_names:
            sample["class_name"] = name
        yield sample


@dataclass(frozen=True)
class SegmentationPairs(Source):
    """Images and their masks in parallel folders, paired by relative path without suffix.

    ADE20K's layout: ``root/images/training/ADE_train_00000001.jpg`` pairs with
    ``root/annotations/training/ADE_train_00000001.png``. Columns: ``key`` (the relative path
    without suffix), ``image`` and ``mask`` (file bytes).

    :param root: the folder holding ``images`` and ``annotations``.
    :param images: the image folder's name under ``root``.
    :param annotations: the mask folder's name under ``root``.
    """

    root: Path
    images: str = "images"
    annotations: str = "annotations"

    def units(self) -> list[Any]:
        image_root = Path(self.root) / self.images
        mask_root = Path(self.root) / self.annotations
        for folder in (image_root, mask_root):
            if not folder.is_dir():
                raise FileNotFoundError(f"segmentation dataset: {folder} does not exist")
        masks = {
            path.relative_to(mask_root).with_suffix("").as_posix(): path
            for path in _images_under(mask_root)
        }
        units: list[tuple[str, str, str]] = []
        for image in _images_under(image_root):
            key = image.relative_to(image_root).with_suffix("").as_posix()
            mask = masks.get(key)
            if mask is None:
                raise FileNotFoundError(f"no mask under {mask_root} for image {image}")
            units.append((key, str(image), str(mask)))
        return units

    def read(self, unit: Any) -> Iterator[dict[str, Any]]:
        key, image, mask = unit
        yield {"key": key, "image": Path(image).read_bytes(), "mask": Path(mask).read_bytes()}
