"""Starting training from converted published weights (config.model.init_checkpoint).

The papers initialise from ImageNet-pretrained networks (DeepLab-v2 §4.1.2) or from a model trained
on MS-COCO; `deeplab_jax.weights.convert` turns those releases into converted checkpoints, and
`load_into` copies every tensor whose name and shape match into a freshly created state.
"""

import jax

from deeplab_jax import weights


def load_into(state, path, state_shardings):
    """`state` with every matching parameter and BatchNorm statistic replaced from `path`."""
    variables = weights.load_variables(path)
    params = weights.merge_into(state.params, variables.get("params", {}))
    batch_stats = weights.merge_into(state.batch_stats, variables.get("batch_stats", {}),
                                     what="batch_stats")
    state = state.replace(params=params, batch_stats=batch_stats)
    return jax.device_put(state, state_shardings)
