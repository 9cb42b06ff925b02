"""TFDS builder `deeplab_demo`: the embedded, procedurally generated demo data set.

Nothing is downloaded: examples come from `deeplab_jax.data.demo_shapes.generate_example`, a pure
function of (seed, split, index), so every machine builds identical files. Images are stored as PNG
and labels as single-channel PNG (class ids, 255 = ignore band), encoded here with OpenCV so the
build needs no TensorFlow; records are array_record, read back with `tfds.data_source`.

Configs: 'default' (3,000 train / 300 val, what configs/demo.py trains on) and 'tiny' (48 / 16, for
tests and smoke runs).
"""

import dataclasses

import tensorflow_datasets as tfds

from deeplab_jax.data import demo_shapes
from deeplab_jax.data.builders.features import encode_png, segmentation_features


@dataclasses.dataclass
class DemoConfig(tfds.core.BuilderConfig):
    num_train: int = 3000
    num_val: int = 300
    seed: int = 0


class DeeplabDemo(tfds.core.GeneratorBasedBuilder):
    """Shapes defined by outline (disc, square, triangle, ring, star, bar, cross) on clutter."""

    VERSION = tfds.core.Version("1.1.0")
    RELEASE_NOTES = {
        "1.0.0": "First release.",
        "1.1.0": "2-5 objects per image (was 3-6); object colours contrast with what they cover.",
    }
    BUILDER_CONFIGS = [
        DemoConfig(name="default", description="3,000 train / 300 val images of 129x129"),
        DemoConfig(name="tiny", description="48 train / 16 val images, for tests", num_train=48,
                   num_val=16),
    ]

    def _info(self):
        return tfds.core.DatasetInfo(
            builder=self,
            description=__doc__,
            features=segmentation_features(),
            supervised_keys=("image", "label"),
        )

    def _split_generators(self, dl_manager):
        del dl_manager  # generated, nothing to download
        return {
            "train": self._generate_examples("train", self.builder_config.num_train),
            "val": self._generate_examples("val", self.builder_config.num_val),
        }

    def _generate_examples(self, split, count):
        for index in range(count):
            image, label = demo_shapes.generate_example(self.builder_config.seed, split, index)
            key = f"{split}_{index:05d}"
            yield key, {
                "image": encode_png(image),
                "label": encode_png(label),
                "image_id": key,
            }
