"""Dataset descriptors and label tables against the papers and the official releases."""

import numpy as np
import pytest

from deeplab_jax.data import datasets, palettes
from deeplab_jax.data.builders import label_maps


@pytest.mark.parametrize("name, classes, splits", [
    ("voc2012", 21, {"train": 1464, "val": 1449, "trainval": 2913}),       # DeepLab-v2 §4.1
    ("voc2012_trainaug", 21, {"train": 10582, "val": 1449}),               # §4.1
    ("pascal_context", 60, {"train": 4998, "val": 5105}),                  # §4.2
    ("person_part", 7, {"train": 1716, "val": 1817}),                      # §4.3
    ("cityscapes", 19, {"train": 2975, "val": 500, "test": 1525}),          # §4.4
    ("coco_stuff164k", 171, {"train": 118287, "val": 5000}),
])
def test_descriptor_numbers(name, classes, splits):
    descriptor = datasets.get_dataset(name)
    assert descriptor.num_classes == classes == len(set(descriptor.class_names))
    assert dict(descriptor.splits) == splits
    assert descriptor.ignore_label == 255
    assert descriptor.palette.shape == (256, 3) and descriptor.palette.dtype == np.uint8


def test_builders_agree_with_descriptors():
    from deeplab_jax.data import sources
    for name in ("voc2012", "voc2012_trainaug", "pascal_context", "person_part", "cityscapes",
                 "coco_stuff164k"):
        descriptor = datasets.get_dataset(name)
        builder_name, _, config = descriptor.tfds_name.partition("/")
        cls = sources._builder_class(builder_name)
        assert cls.NUM_CLASSES == descriptor.num_classes
        assert cls.OFFICIAL_SPLIT_SIZES[config or "default"] == dict(descriptor.splits)


def test_cityscapes_classes_and_colours_in_train_id_order():
    assert datasets.get_dataset("cityscapes").class_names[:3] == ("road", "sidewalk", "building")
    assert datasets.get_dataset("cityscapes").class_names[-1] == "bicycle"
    table = label_maps.cityscapes_label_to_train_id()
    assert (table[:34] != 255).sum() == 19 and table[26] == 13  # car
    palette = datasets.get_dataset("cityscapes").palette
    np.testing.assert_array_equal(palette[13], (0, 0, 142))  # car colour
    np.testing.assert_array_equal(palette[:19], palettes.CITYSCAPES_COLORS)


def test_context_tables():
    assert len(label_maps.CONTEXT_459_CLASSES) == 459 == len(set(label_maps.CONTEXT_459_CLASSES))
    assert label_maps.CONTEXT_459_CLASSES[283] == "person"  # labels.txt line 284
    table = label_maps.context_459_to_60()
    assert table[284] == label_maps.CONTEXT_60_CLASSES.index("person") == 37
    assert table[0] == 0 and table[1] == 0  # unlabelled, accordion -> background
    with pytest.raises(ValueError, match="unicorn"):
        label_maps.context_459_to_60(classes_59=("unicorn",))


def test_coco_stuff_tables():
    assert len(label_maps.COCO_STUFF_182) == 182 and len(label_maps.COCO_STUFF_CLASSES) == 171
    assert label_maps.COCO_STUFF_182[91] == "banner" and label_maps.COCO_STUFF_182[181] == "wood"


def test_unknown_dataset_lists_known_ones():
    with pytest.raises(ValueError, match="cityscapes.*folder"):
        datasets.get_dataset("ade20k")
