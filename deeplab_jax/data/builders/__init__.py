"""TFDS builders reading the official data set layouts (or generating the demo), without TensorFlow.

`BUILDERS` maps a TFDS builder name to "module:Class"; modules are imported only when used, so the
package does not pay for builders it does not need.
"""

BUILDERS = {
    "deeplab_demo": "deeplab_jax.data.builders.demo:DeeplabDemo",
    "voc2012_segmentation": "deeplab_jax.data.builders.voc:Voc2012Segmentation",
    "pascal_context": "deeplab_jax.data.builders.pascal_context:PascalContext",
    "pascal_person_part": "deeplab_jax.data.builders.person_part:PascalPersonPart",
    "cityscapes_semantic": "deeplab_jax.data.builders.cityscapes:CityscapesSemantic",
    "coco_stuff164k": "deeplab_jax.data.builders.coco_stuff:CocoStuff164k",
    "folder_segmentation": "deeplab_jax.data.builders.folder:FolderSegmentation",
}
