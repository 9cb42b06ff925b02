"""Official class lists and the label mappings the builders apply (tables of facts, transcribed).

Sources, one per table (read, not copied as code):
- Cityscapes labelId -> trainId: cityscapesScripts `cityscapesscripts/helpers/labels.py` (the
  `labels` table, ids 0-33; 'license plate' has id -1 and never appears in *_labelIds.png).
- PASCAL-Context: the release's labels.txt (459 classes, "id: name", ids 1-459 in alphabetical
  order; LabelMap value 0 = unlabelled) and 59_labels.txt (the 59 most frequent classes, DeepLab-v2
  §4.2). Cross-checked against the 459 ids used by the Detail-API converters (PyTorch-Encoding,
  MMSegmentation's pascal_context.py): see tests/data/test_label_maps.py.
- PASCAL-Person-Part: part names of the PASCAL-Part release (Chen et al. 2014, part2ind.m, person
  entries) merged into head, torso, upper/lower arms, upper/lower legs (DeepLab-v2 §4.3); class ids
  as in the Person-Part release of Chen et al. (pascal_person_part_gt: 0 background, 1 head,
  2 torso, 3 upper arms, 4 lower arms, 5 upper legs, 6 lower legs).
- COCO-Stuff: cocostuff `labels.md` (ids 1-182; 0 unlabeled; 11 thing ids removed from COCO).
  The stuffthingmaps PNGs store id - 1 (0-181) and 255 for unlabeled.
"""

import numpy as np

# ----- Cityscapes -------------------------------------------------------------------------------
# (name, labelId, trainId); trainId 255 = ignored in training and evaluation.
CITYSCAPES_LABELS = (
    ("unlabeled", 0, 255), ("ego vehicle", 1, 255), ("rectification border", 2, 255),
    ("out of roi", 3, 255), ("static", 4, 255), ("dynamic", 5, 255), ("ground", 6, 255),
    ("road", 7, 0), ("sidewalk", 8, 1), ("parking", 9, 255), ("rail track", 10, 255),
    ("building", 11, 2), ("wall", 12, 3), ("fence", 13, 4), ("guard rail", 14, 255),
    ("bridge", 15, 255), ("tunnel", 16, 255), ("pole", 17, 5), ("polegroup", 18, 255),
    ("traffic light", 19, 6), ("traffic sign", 20, 7), ("vegetation", 21, 8), ("terrain", 22, 9),
    ("sky", 23, 10), ("person", 24, 11), ("rider", 25, 12), ("car", 26, 13), ("truck", 27, 14),
    ("bus", 28, 15), ("caravan", 29, 255), ("trailer", 30, 255), ("train", 31, 16),
    ("motorcycle", 32, 17), ("bicycle", 33, 18),
)
CITYSCAPES_CLASSES = tuple(name for name, _, train_id in sorted(
    CITYSCAPES_LABELS, key=lambda row: row[2]) if train_id != 255)


def cityscapes_label_to_train_id() -> np.ndarray:
    """Lookup table uint8[256]: labelId -> trainId (255 for every id not trained on)."""
    table = np.full(256, 255, np.uint8)
    for _, label_id, train_id in CITYSCAPES_LABELS:
        table[label_id] = train_id
    return table


# ----- PASCAL-Context ---------------------------------------------------------------------------
# labels.txt of the release: id = position + 1.
CONTEXT_459_CLASSES = tuple("""
accordion|aeroplane|air conditioner|antenna|artillery|ashtray|atrium|baby carriage|bag|ball|balloon|
bamboo weaving|barrel|baseball bat|basket|basketball backboard|bathtub|bed|bedclothes|beer|bell|bench|
bicycle|binoculars|bird|bird cage|bird feeder|bird nest|blackboard|board|boat|bone|book|bottle|
bottle opener|bowl|box|bracelet|brick|bridge|broom|brush|bucket|building|bus|cabinet|cabinet door|cage|
cake|calculator|calendar|camel|camera|camera lens|can|candle|candle holder|cap|car|card|cart|case|
casette recorder|cash register|cat|cd|cd player|ceiling|cell phone|cello|chain|chair|chessboard|chicken|
chopstick|clip|clippers|clock|closet|cloth|clothes tree|coffee|coffee machine|comb|computer|concrete|cone|
container|control booth|controller|cooker|copying machine|coral|cork|corkscrew|counter|court|cow|
crabstick|crane|crate|cross|crutch|cup|curtain|cushion|cutting board|dais|disc|disc case|dishwasher|dock|
dog|dolphin|door|drainer|dray|drink dispenser|drinking machine|drop|drug|drum|drum kit|duck|dumbbell|
earphone|earrings|egg|electric fan|electric iron|electric pot|electric saw|electronic keyboard|engine|
envelope|equipment|escalator|exhibition booth|extinguisher|eyeglass|fan|faucet|fax machine|fence|
ferris wheel|fire extinguisher|fire hydrant|fire place|fish|fish tank|fishbowl|fishing net|fishing pole|
flag|flagstaff|flame|flashlight|floor|flower|fly|foam|food|footbridge|forceps|fork|forklift|fountain|fox|
frame|fridge|frog|fruit|funnel|furnace|game controller|game machine|gas cylinder|gas hood|gas stove|
gift box|glass|glass marble|globe|glove|goal|grandstand|grass|gravestone|ground|guardrail|guitar|gun|
hammer|hand cart|handle|handrail|hanger|hard disk drive|hat|hay|headphone|heater|helicopter|helmet|
holder|hook|horse|horse-drawn carriage|hot-air balloon|hydrovalve|ice|inflator pump|ipod|iron|
ironing board|jar|kart|kettle|key|keyboard|kitchen range|kite|knife|knife block|ladder|ladder truck|
ladle|laptop|leaves|lid|life buoy|light|light bulb|lighter|line|lion|lobster|lock|machine|mailbox|
mannequin|map|mask|mat|match book|mattress|menu|metal|meter box|microphone|microwave|mirror|missile|
model|money|monkey|mop|motorbike|mountain|mouse|mouse pad|musical instrument|napkin|net|newspaper|oar|
ornament|outlet|oven|oxygen bottle|pack|pan|paper|paper box|paper cutter|parachute|parasol|parterre|
patio|pelage|pen|pen container|pencil|person|photo|piano|picture|pig|pillar|pillow|pipe|pitcher|plant|
plastic|plate|platform|player|playground|pliers|plume|poker|poker chip|pole|pool table|postcard|poster|
pot|pottedplant|printer|projector|pumpkin|rabbit|racket|radiator|radio|rail|rake|ramp|range hood|
receiver|recorder|recreational machines|remote control|road|robot|rock|rocket|rocking horse|rope|rug|
ruler|runway|saddle|sand|saw|scale|scanner|scissors|scoop|screen|screwdriver|sculpture|scythe|sewer|
sewing machine|shed|sheep|shell|shelves|shoe|shopping cart|shovel|sidecar|sidewalk|sign|signal light|
sink|skateboard|ski|sky|sled|slippers|smoke|snail|snake|snow|snowmobiles|sofa|spanner|spatula|speaker|
speed bump|spice container|spoon|sprayer|squirrel|stage|stair|stapler|stick|sticky note|stone|stool|
stove|straw|stretcher|sun|sunglass|sunshade|surveillance camera|swan|sweeper|swim ring|swimming pool|
swing|switch|table|tableware|tank|tap|tape|tarp|telephone|telephone booth|tent|tire|toaster|toilet|
tong|tool|toothbrush|towel|toy|toy car|track|train|trampoline|trash bin|tray|tree|tricycle|tripod|
trophy|truck|tube|turtle|tvmonitor|tweezers|typewriter|umbrella|unknown|vacuum cleaner|vending machine|
video camera|video game console|video player|video tape|violin|wakeboard|wall|wallet|wardrobe|
washing machine|watch|water|water dispenser|water pipe|water skate board|watermelon|whale|wharf|wheel|
wheelchair|window|window blinds|wineglass|wire|wood|wool""".replace("\n", "").split("|"))

# 59_labels.txt of the release (alphabetical); class k of the 60-class set is CONTEXT_59[k - 1].
CONTEXT_59_CLASSES = (
    "aeroplane", "bag", "bed", "bedclothes", "bench", "bicycle", "bird", "boat", "book", "bottle",
    "building", "bus", "cabinet", "car", "cat", "ceiling", "chair", "cloth", "computer", "cow",
    "cup", "curtain", "dog", "door", "fence", "floor", "flower", "food", "grass", "ground", "horse",
    "keyboard", "light", "motorbike", "mountain", "mouse", "person", "plate", "platform",
    "pottedplant", "road", "rock", "sheep", "shelves", "sidewalk", "sign", "sky", "snow", "sofa",
    "table", "track", "train", "tree", "truck", "tvmonitor", "wall", "water", "window", "wood",
)
CONTEXT_60_CLASSES = ("background",) + CONTEXT_59_CLASSES


def context_459_to_60(classes_459=CONTEXT_459_CLASSES, classes_59=CONTEXT_59_CLASSES) -> np.ndarray:
    """Lookup table uint8[460]: LabelMap value (0 unlabelled, 1-459) -> 0 (background/other) or
    1-59, matched by class name."""
    index_of = {name: position + 1 for position, name in enumerate(classes_459)}
    missing = [name for name in classes_59 if name not in index_of]
    if missing:
        raise ValueError(f"59-class names not found in the 459-class list: {missing}")
    table = np.zeros(len(classes_459) + 1, np.uint8)
    for k, name in enumerate(classes_59, start=1):
        table[index_of[name]] = k
    return table


# ----- PASCAL-Person-Part -----------------------------------------------------------------------
PERSON_PART_CLASSES = ("background", "head", "torso", "upper arms", "lower arms", "upper legs",
                       "lower legs")
# PASCAL-Part person part name -> Person-Part class id.
PERSON_PART_MERGE = {
    "head": 1, "leye": 1, "reye": 1, "lear": 1, "rear": 1, "lebrow": 1, "rebrow": 1, "nose": 1,
    "mouth": 1, "hair": 1,
    "torso": 2, "neck": 2,
    "luarm": 3, "ruarm": 3,
    "llarm": 4, "rlarm": 4, "lhand": 4, "rhand": 4,
    "luleg": 5, "ruleg": 5,
    "llleg": 6, "rlleg": 6, "lfoot": 6, "rfoot": 6,
}

# ----- COCO-Stuff -------------------------------------------------------------------------------
# labels.md ids 1-182 (value in stuffthingmaps PNGs = id - 1); None = removed from COCO, unused.
COCO_STUFF_182 = tuple(None if name == "-" else name for name in """
person|bicycle|car|motorcycle|airplane|bus|train|truck|boat|traffic light|fire hydrant|-|stop sign|
parking meter|bench|bird|cat|dog|horse|sheep|cow|elephant|bear|zebra|giraffe|-|backpack|umbrella|-|-|
handbag|tie|suitcase|frisbee|skis|snowboard|sports ball|kite|baseball bat|baseball glove|skateboard|
surfboard|tennis racket|bottle|-|wine glass|cup|fork|knife|spoon|bowl|banana|apple|sandwich|orange|
broccoli|carrot|hot dog|pizza|donut|cake|chair|couch|potted plant|bed|-|dining table|-|-|toilet|-|tv|
laptop|mouse|remote|keyboard|cell phone|microwave|oven|toaster|sink|refrigerator|-|book|clock|vase|
scissors|teddy bear|hair drier|toothbrush|-|banner|blanket|branch|bridge|building-other|bush|cabinet|
cage|cardboard|carpet|ceiling-other|ceiling-tile|cloth|clothes|clouds|counter|cupboard|curtain|
desk-stuff|dirt|door-stuff|fence|floor-marble|floor-other|floor-stone|floor-tile|floor-wood|flower|fog|
food-other|fruit|furniture-other|grass|gravel|ground-other|hill|house|leaves|light|mat|metal|
mirror-stuff|moss|mountain|mud|napkin|net|paper|pavement|pillow|plant-other|plastic|platform|
playingfield|railing|railroad|river|road|rock|roof|rug|salad|sand|sea|shelf|sky-other|skyscraper|snow|
solid-other|stairs|stone|straw|structural-other|table|tent|textile-other|towel|tree|vegetable|
wall-brick|wall-concrete|wall-other|wall-panel|wall-stone|wall-tile|wall-wood|water-other|waterdrops|
window-blind|window-other|wood""".replace("\n", "").split("|"))
COCO_STUFF_CLASSES = tuple(name for name in COCO_STUFF_182 if name is not None)


def coco_stuff_to_171() -> np.ndarray:
    """Lookup table uint8[256]: stuffthingmaps value (id - 1, 255 unlabeled) -> 0-170 or 255.

    The 11 removed thing ids never occur in the release; mapped to 255 so a stray one is ignored
    (the builder's value check reports them as out of range before mapping).
    """
    table = np.full(256, 255, np.uint8)
    used = 0
    for value, name in enumerate(COCO_STUFF_182):
        if name is not None:
            table[value] = used
            used += 1
    return table
