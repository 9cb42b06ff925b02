"""Published DeepLab weights (Caffe, PyTorch, TF) and the converted-checkpoint format.

    from deeplab_jax import weights
    variables = weights.convert("caffe", "train2_iter_20000.caffemodel",
                                "deeplab_v2_resnet101_aspp_l", 21)
    logits = model.apply(variables, images, train=False)

`importer` reads weight files into a registry model's variables; `format` writes and reads the
converted checkpoints (orbax + deeplab_model.json) that training (`init_checkpoint`), evaluation
and prediction load, and `model_info` interprets deeplab_model.json (model, layout, classes);
`zoo` lists the published releases, `fetch` downloads, verifies and converts them (`download` does
the HTTP and archive work); `convert` and `fetch` are the command lines.
"""

from deeplab_jax.weights.format import (
    MODEL_INFO_FILE,
    check_finite,
    load_model_info,
    load_variables,
    merge_into,
    save_npz,
    save_variables,
)
from deeplab_jax.weights.importer import SOURCES, convert, import_weights
from deeplab_jax.weights.mapping import ImportReport, WeightImportError
from deeplab_jax.weights.model_info import load_model

__all__ = [
    "MODEL_INFO_FILE",
    "SOURCES",
    "ImportReport",
    "WeightImportError",
    "check_finite",
    "convert",
    "import_weights",
    "load_model",
    "load_model_info",
    "load_variables",
    "merge_into",
    "save_npz",
    "save_variables",
]
