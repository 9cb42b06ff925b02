"""COCO-Stuff 164k (171 classes): the MS-COCO pre-training stage of DeepLab-v2 (§4.1.2).

Commands (data: COCO 2017 train/val images + stuffthingmaps_trainval2017.zip, 21 GB, downloaded on
first use; offline, give them as --config.dataset.manual_dir=/data/coco, layout in
deeplab_jax/data/datasets.py):
  python -m deeplab_jax.main --config=configs/cocostuff.py --workdir=runs/coco_stuff
Then fine-tune on VOC / Context / Person-Part with --config.model.init_checkpoint=runs/coco_stuff.
Variants: v2_aspp_l (default), v2_largefov.
Expected: the paper reports no COCO(-Stuff) mIoU of its own; what it measures is the gain of COCO
pre-training downstream (+2.01 on VOC val, Table 4; +1.5 on Context; +1.3 on Person-Part). The
paper pre-trained on COCO's object masks; COCO-Stuff labels the same 164k images with 80 thing +
91 stuff classes, a superset, so the classifier is re-initialised for the downstream classes.

Optimiser: the §4.1.2 recipe of configs/voc.py with the descriptor's 513x513 crops; the paper gives
no COCO schedule, so num_steps is raised to cover 118k images for a few epochs.
"""

from deeplab_jax.config import recipes

VARIANTS = ("v2_aspp_l", "v2_largefov")


def get_config(variant: str = "v2_aspp_l"):
    recipes.check_variant(variant, VARIANTS, "configs/cocostuff.py")
    # 118,287 train / 5,000 val, 171 classes
    config = recipes.paper_config(variant, "coco_stuff164k")
    config.input.crop_size = None  # the descriptor's (513, 513)
    config.num_steps = 60000  # batch 10: about 5 epochs of COCO train2017
    return config
