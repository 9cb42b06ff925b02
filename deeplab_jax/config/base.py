"""The full configuration schema; every file in configs/ starts from `base_config()` and overrides.

Keeping all fields in one place means a locked config (`lock_config=True` in the command lines)
rejects a misspelt `--config.optim.base_lr` instead of silently adding it, and every field has a
documented default. Values are the DeepLab-v2 paper's (§4.1.2) unless a config file says otherwise.
"""

import ml_collections
from ml_collections import config_dict

from deeplab_jax.data.datasets import PAD_RGB
from deeplab_jax.parallel.partitioning import DEFAULT_FSDP_MIN_SIZE


def base_config() -> ml_collections.ConfigDict:
    config = ml_collections.ConfigDict()
    config.seed = 0

    config.dataset = ml_collections.ConfigDict()
    config.dataset.name = "demo"  # key of deeplab_jax.data.datasets.DATASETS
    config.dataset.tfds_name = ""  # '' = the descriptor's builder; e.g. 'deeplab_demo/tiny'
    config.dataset.data_dir = ""  # '' = TFDS default (~/tensorflow_datasets or $TFDS_DATA_DIR)
    config.dataset.manual_dir = ""  # where the official release was extracted (real data sets)
    config.dataset.train_split = ""  # '' = the descriptor's
    config.dataset.eval_split = ""
    # Building from a manual directory: skip (and record in the dataset info) corrupt or
    # inconsistent examples instead of failing; full_data None = assert the official split sizes
    # only when the data look like the full release (True / False force it).
    config.dataset.skip_bad = False
    config.dataset.full_data = config_dict.placeholder(bool)

    config.model = ml_collections.ConfigDict()
    config.model.name = "deeplab_v2_resnet101_aspp_l"  # key of deeplab_jax.models.MODELS
    # Keyword overrides for the model factory (output_stride, msc_scales, bn_frozen, widths...).
    config.model.overrides = ml_collections.ConfigDict()
    config.model.init_checkpoint = ""  # orbax checkpoint or converted weights to start from
    # Mixed precision and rematerialisation are model overrides (model.overrides.dtype =
    # 'bfloat16': bf16 activations, float32 parameters, BN statistics, gradients, optimizer state
    # and logits; model.overrides.remat = True: jax.checkpoint around every backbone block). With
    # remat on, this jax.checkpoint_policies name chooses what a block keeps for the backward
    # pass: '' = only its input (recompute everything), 'dots_saveable' = also the convolution
    # outputs (recompute only BatchNorm and ReLU).
    config.model.remat_policy = ""

    config.batch_size = 10  # global; must divide by the number of devices
    # Gradient accumulation: each step averages the gradients of this many equal micro-batches of
    # batch_size / grad_accum_steps images (each a multiple of the device count), so the paper's
    # batch 10/20 fits small accelerators. BatchNorm normalises with micro-batch statistics.
    config.grad_accum_steps = 1
    config.num_steps = 20000
    config.input = ml_collections.ConfigDict()
    config.input.crop_size = config_dict.placeholder(tuple)  # None = the descriptor's crop_size
    config.input.scale_range = (0.5, 1.5)
    config.input.flip = True
    config.input.pad_value = PAD_RGB  # image padding (mean RGB); labels pad with the ignore label
    config.input.worker_count = 0  # grain worker processes for augmentation (0 = threads only)
    config.input.read_threads = 2

    config.loss = ml_collections.ConfigDict()
    # 'subsample': labels taken at the logits' positions (paper §4); 'upsample': logits upsampled
    # bilinearly to the label size before the loss.
    config.loss.label_mode = "subsample"
    # Per-class weights (length K) or () for none.
    config.loss.class_weights = ()

    config.optim = ml_collections.ConfigDict()
    config.optim.name = "sgd"  # 'sgd' (Caffe-style momentum) or 'adamw'
    config.optim.base_lr = 1e-3
    config.optim.momentum = 0.9
    # 'sgd': added to the gradient (Caffe's weight_decay, the papers' 5e-4 / 4e-5). 'adamw':
    # decoupled, each step shrinks the weights by lr x weight_decay, so useful values are far
    # larger (the demo: 0.05; 1e-4 barely acts, experiments/README.md).
    config.optim.weight_decay = 5e-4
    config.optim.schedule = "poly"  # 'poly' | 'step' | 'constant'
    config.optim.poly_power = 0.9
    config.optim.step_size = 2000  # 'step': multiply by step_gamma every step_size steps
    config.optim.step_gamma = 0.1
    config.optim.warmup_steps = 0
    # (regex over 'a/b/c' parameter paths, multiplier); first match wins; 0 freezes.
    # The release: classifier weights 10x, classifier biases 20x (no decay), the rest 1x.
    config.optim.lr_multipliers = (("^head/.*bias$", 20.0), ("^head/", 10.0))
    # Parameters matching this regex get no weight decay (Caffe decay_mult 0 on biases, BN).
    config.optim.no_decay = r"(bias$|/bn/)"
    config.optim.grad_clip_norm = 0.0  # 0 = off

    # Parameter sharding (deeplab_jax.parallel.partitioning): (regex over 'a/b/c' parameter paths, spec),
    # first match wins; spec is a tuple with one mesh axis name or None per dimension (e.g.
    # ('^head/', (None, None, None, 'data')) splits the classifier's output channels), 'fsdp'
    # (split the largest dimension divisible by the 'data' axis) or 'replicate'. Unmatched
    # parameters are replicated; optimizer state follows its parameter; BN statistics replicate.
    config.sharding = ml_collections.ConfigDict()
    config.sharding.rules = ()
    config.sharding.fsdp = False  # append ('.*', 'fsdp'): FSDP / ZeRO-3 for large backbones
    # 'fsdp' leaves parameters with fewer elements than this replicated (gathering them costs more
    # than it saves).
    config.sharding.fsdp_min_size = DEFAULT_FSDP_MIN_SIZE

    config.eval = ml_collections.ConfigDict()
    config.eval.every_steps = 2000
    config.eval.batch_size = 8
    config.eval.max_examples = 0  # 0 = the whole split
    config.eval.size = config_dict.placeholder(tuple)  # None = the descriptor's eval_size
    config.eval.num_overlays = 4  # prediction overlays written to TensorBoard per evaluation
    # Output stride of the evaluation model (0 = as in training): v3/v3+ train at 16 and evaluate
    # at 8 with the same weights (v3 paper §4.3).
    config.eval.output_stride = 0
    # Test-time modes (deeplab_jax/inference): input scales and flip, fused by 'mean' (v3/v3+)
    # or 'max' (v2 MSC); sliding windows (H, W) with a stride for large images (Cityscapes).
    config.eval.scales = (1.0,)
    config.eval.flip = False
    config.eval.fusion = "mean"
    config.eval.window_size = ()  # () = whole image
    config.eval.window_stride = ()  # () = 2/3 of the window
    # Trimap accuracy band widths in pixels (paper Fig. 10); () = off.
    config.eval.trimap_widths = ()

    config.crf = ml_collections.ConfigDict()
    config.crf.enabled = False
    # 'meanfield' (jitted lattice, 99.8% labels equal to the exact CRF), 'permutohedral' (exact,
    # host threads), 'separable' (dense matrix products only: TPU-ready, approximate) or 'auto'
    # (chosen by backend; deeplab_jax.crf.auto_method says how).
    config.crf.method = "meanfield"
    config.crf.iterations = 10
    config.crf.bi_w = 4.0
    config.crf.bi_xy_std = 67.0
    config.crf.bi_rgb_std = 3.0
    config.crf.pos_w = 3.0
    config.crf.pos_xy_std = 1.0

    config.predict = ml_collections.ConfigDict()
    config.predict.num_images = 8  # val predictions written as PNGs at the end of training

    config.log_every_steps = 50
    config.checkpoint_every_steps = 1000
    config.keep_checkpoints = 3
    config.progress_bar = True  # tqdm with ETA when stderr is a terminal
    return config
