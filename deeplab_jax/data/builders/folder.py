"""TFDS builder `folder_segmentation`: a user's own data set from a plain folder.

The folder's layout and how it is read are in folder_layout.py (shared with the descriptor,
`deeplab_jax.data.datasets.folder_descriptor(manual_dir)`). Each folder is its own TFDS config,
named after the folder and a hash of its absolute path (`folder_layout.folder_config_name`), so
two folders never share built files.
"""

import dataclasses
import os

import tensorflow_datasets as tfds

from deeplab_jax.data.builders import folder_layout, validation
from deeplab_jax.data.builders.manual import ExampleFiles, ManualSegmentationBuilder


@dataclasses.dataclass
class FolderConfig(tfds.core.BuilderConfig):
    val_fraction: float = folder_layout.VAL_FRACTION
    seed: int = folder_layout.SEED


class FolderSegmentation(ManualSegmentationBuilder):
    """A custom segmentation data set read from images/, masks/ and classes.txt."""

    VERSION = tfds.core.Version("1.0.0")
    RELEASE_NOTES = {"1.0.0": "First release."}
    BUILDER_CONFIGS = [FolderConfig(name="default", description="a folder of images and masks")]
    INSTRUCTIONS = folder_layout.INSTRUCTIONS
    LAYOUT = folder_layout.LAYOUT
    IMAGE_FORMAT = None  # JPEG and PNG files are both stored as they are

    @classmethod
    def make_config(cls, name: str) -> FolderConfig:
        return FolderConfig(name=name, description="a folder of images and masks")

    def _list_examples(self):
        manual_dir = self._manual_dir
        self._classes = folder_layout.read_classes(manual_dir)
        images = folder_layout.image_stems(manual_dir)
        if not os.path.isdir(os.path.join(manual_dir, "masks")):
            raise self.missing_error(["masks/"])
        splits = folder_layout.split_stems(manual_dir, images, self.builder_config.val_fraction,
                                           self.builder_config.seed)
        self.info.metadata["class_names"] = list(self._classes)
        return {split: [ExampleFiles(stem, images.get(stem, os.path.join(
                            manual_dir, "images", f"{stem}.<jpg|png>")),
                                     os.path.join(manual_dir, "masks", f"{stem}.png"))
                        for stem in stems]
                for split, stems in splits.items()}

    def _load_example(self, files):
        if "<" in files.image_path:
            raise validation.BadExampleError(files.image_path, "listed in a split file but no "
                                             "image with this stem is in images/")
        image_bytes, image = self.load_image(files.image_path)
        label = self.load_mask(files.label_path)
        return self.finish(files.example_id, image_bytes, image, label, files.image_path,
                           files.label_path)

    @property
    def num_classes(self):
        return len(self._classes)
