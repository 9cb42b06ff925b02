"""Fake copies of the official data set layouts, written by the tests themselves.

Each `write_*` function lays out a tiny release (a few 24x32 images) exactly as the real one is
organised (file names, folders, list files, .mat structures, palette PNGs with 255 borders) and
returns the truth the tests compare against: the ids per split and the class-id labels written.
`archive` packs such a tree under an official archive name, as the download tests serve it.
"""

import os
import tarfile
import zipfile

import cv2
import numpy as np
import scipy.io
from PIL import Image

from deeplab_jax.data import palettes, sources

HEIGHT, WIDTH = 24, 32


def write_jpeg(path, rng, height=HEIGHT, width=WIDTH):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = rng.integers(0, 256, (height, width, 3), np.uint8)
    Image.fromarray(image).save(path, "JPEG", quality=90)


def write_rgb_png(path, rng, height=HEIGHT, width=WIDTH):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = rng.integers(0, 256, (height, width, 3), np.uint8)
    Image.fromarray(image).save(path, "PNG")
    return image


def write_palette_png(path, label):
    """A VOC-style mask: mode 'P', VOC palette, palette index = class id."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    image = Image.fromarray(label.astype(np.uint8), mode="P")
    image.putpalette(palettes.voc_palette().reshape(-1).tolist())
    image.save(path, "PNG")


def write_gray_png(path, label):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    Image.fromarray(label.astype(np.uint8), mode="L").save(path, "PNG")


def decode_file_rgb(path):
    """What a reader should get back for an image file (OpenCV, RGB)."""
    array = cv2.imdecode(np.fromfile(path, np.uint8), cv2.IMREAD_COLOR)
    return array[..., ::-1]


def random_label(rng, num_classes, border=True, height=HEIGHT, width=WIDTH):
    """Blocks of random classes; with border=True a VOC-like 255 band around each block."""
    label = rng.integers(0, num_classes, (height // 8 + 1, width // 8 + 1)).astype(np.uint8)
    label = np.kron(label, np.ones((8, 8), np.uint8))[:height, :width]
    if border:
        edges = np.zeros_like(label, bool)
        edges[:, 1:] |= label[:, 1:] != label[:, :-1]
        edges[1:, :] |= label[1:, :] != label[:-1, :]
        label[edges] = 255
    return label


def write_list(path, ids):
    os.makedirs(os.path.dirname(path), exist_ok=True)
    with open(path, "w") as stream:
        stream.write("".join(f"{i}\n" for i in ids))


def archive(root, folders, path):
    """Packs root/<folder> for each of `folders` into `path` (.zip, .tar, .tgz or .tar.gz), with
    member paths relative to root as in the official archives; returns path."""
    path = str(path)
    if path.endswith(".zip"):
        with zipfile.ZipFile(path, "w") as bundle:
            for folder in folders:
                for directory, _, names in os.walk(os.path.join(root, folder)):
                    for name in sorted(names):
                        full = os.path.join(directory, name)
                        bundle.write(full, os.path.relpath(full, root))
    else:
        with tarfile.open(path, "w:gz" if path.endswith("gz") else "w") as bundle:
            for folder in folders:
                bundle.add(os.path.join(root, folder), arcname=folder)
    return path


# ----- PASCAL VOC 2012 + SBD ---------------------------------------------------------------------
VOC_TRAIN = ["2007_000032", "2007_000039", "2008_000015", "2009_000123", "2011_000003"]
VOC_VAL = ["2007_000033", "2008_000073", "2010_000045"]
# SBD train/val overlap VOC train and VOC val on purpose (the trainaug arithmetic).
SBD_TRAIN = ["2007_000032", "2008_000099", "2008_000100", "2010_000045"]
SBD_VAL = ["2007_000039", "2009_000200", "2008_000073"]


def write_voc(root, rng, with_sbd=True):
    voc = os.path.join(root, "VOCdevkit", "VOC2012")
    labels = {}
    for image_id in sorted(set(VOC_TRAIN + VOC_VAL + SBD_TRAIN + SBD_VAL)):
        write_jpeg(os.path.join(voc, "JPEGImages", f"{image_id}.jpg"), rng)
    for image_id in VOC_TRAIN + VOC_VAL:
        labels[image_id] = random_label(rng, 21)
        write_palette_png(os.path.join(voc, "SegmentationClass", f"{image_id}.png"),
                          labels[image_id])
    segmentation = os.path.join(voc, "ImageSets", "Segmentation")
    write_list(os.path.join(segmentation, "train.txt"), VOC_TRAIN)
    write_list(os.path.join(segmentation, "val.txt"), VOC_VAL)
    write_list(os.path.join(segmentation, "trainval.txt"), sorted(VOC_TRAIN + VOC_VAL))
    sbd_labels = {}
    if with_sbd:
        sbd = os.path.join(root, "benchmark_RELEASE", "dataset")
        for image_id in SBD_TRAIN + SBD_VAL:
            sbd_labels[image_id] = random_label(rng, 21, border=False)
            write_sbd_mat(os.path.join(sbd, "cls", f"{image_id}.mat"), sbd_labels[image_id])
        write_list(os.path.join(sbd, "train.txt"), SBD_TRAIN)
        write_list(os.path.join(sbd, "val.txt"), SBD_VAL)
    return {"voc": voc, "labels": labels, "sbd_labels": sbd_labels}


def write_sbd_mat(path, label):
    """SBD cls/<id>.mat: struct GTcls with Boundaries, Segmentation (class ids) and CategoriesPresent."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    present = np.unique(label[(label > 0) & (label < 255)]).astype(np.uint8)
    boundaries = np.empty((20, 1), object)  # one (sparse, in the release) edge map per class
    for k in range(20):
        boundaries[k, 0] = np.zeros(label.shape, np.uint8)
    scipy.io.savemat(path, {"GTcls": {
        "Boundaries": boundaries,
        "Segmentation": label.astype(np.uint8),
        "CategoriesPresent": present.reshape(-1, 1),
    }})


def read_split(builder, split):
    """{image_id: decoded record} of one split, through the project's DecodedSource."""
    source = sources.DecodedSource(builder, split)
    return {source[i]["image_id"]: source[i] for i in range(len(source))}


# ----- PASCAL-Context ----------------------------------------------------------------------------
CONTEXT_TRAIN = ["2008_000002", "2008_000003", "2010_000001"]
CONTEXT_VAL = ["2008_000004", "2010_000002"]


def write_voc2010_images(root, rng, train, val, person_lists=False):
    voc = os.path.join(root, "VOCdevkit", "VOC2010")
    for image_id in train + val:
        write_jpeg(os.path.join(voc, "JPEGImages", f"{image_id}.jpg"), rng)
    write_list(os.path.join(voc, "ImageSets", "Main", "train.txt"), train)
    write_list(os.path.join(voc, "ImageSets", "Main", "val.txt"), val)
    return voc


def write_context(root, rng, label_maps_by_id):
    """trainval/<id>.mat with LabelMap (uint16, 0-459) as in the release's trainval.tar.gz."""
    voc = write_voc2010_images(root, rng, CONTEXT_TRAIN, CONTEXT_VAL)
    for image_id, label_map in label_maps_by_id.items():
        path = os.path.join(root, "trainval", f"{image_id}.mat")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        scipy.io.savemat(path, {"LabelMap": label_map.astype(np.uint16)})
    return voc


# ----- PASCAL-Person-Part ------------------------------------------------------------------------
PERSON_TRAIN = ["2008_000008", "2008_000023"]
PERSON_VAL = ["2008_000026", "2009_000001", "2010_000009"]


def write_person_part_release(root, rng, labels):
    """pascal_person_part/{pascal_person_part_gt, pascal_person_part_trainval_list} + VOC2010."""
    write_voc2010_images(root, rng, PERSON_TRAIN, PERSON_VAL)
    release = os.path.join(root, "pascal_person_part")
    for image_id, label in labels.items():
        write_gray_png(os.path.join(release, "pascal_person_part_gt", f"{image_id}.png"), label)
    for split, ids in (("train", PERSON_TRAIN), ("val", PERSON_VAL)):
        path = os.path.join(release, "pascal_person_part_trainval_list", f"{split}.txt")
        os.makedirs(os.path.dirname(path), exist_ok=True)
        with open(path, "w") as stream:
            stream.write("".join(f"/JPEGImages/{i}.jpg /SegmentationPart/{i}.png\n" for i in ids))


def write_pascal_part_mat(path, objects):
    """Annotations_Part/<id>.mat: anno.imname, anno.objects(class, class_ind, mask, parts)."""
    os.makedirs(os.path.dirname(path), exist_ok=True)
    records = np.empty((1, len(objects)), object)
    for index, (name, mask, parts) in enumerate(objects):
        part_records = np.empty((1, len(parts)), object)
        for p_index, (part_name, part_mask) in enumerate(parts):
            part_records[0, p_index] = {"part_name": part_name,
                                        "mask": part_mask.astype(np.uint8)}
        records[0, index] = {"class": name, "class_ind": 15 if name == "person" else 12,
                             "mask": mask.astype(np.uint8), "parts": part_records}
    scipy.io.savemat(path, {"anno": {"imname": os.path.basename(path)[:-4], "objects": records}})


# ----- Cityscapes -------------------------------------------------------------------------------
def write_cityscapes(root, rng, cities):
    """{split: {city: [label_ids arrays]}} -> leftImg8bit + gtFine layout; returns truth by id."""
    truth = {}
    for split, by_city in cities.items():
        for city, label_ids_list in by_city.items():
            for frame, label_ids in enumerate(label_ids_list):
                stem = f"{city}_000000_{frame:06d}"
                image = write_rgb_png(os.path.join(root, "leftImg8bit", split, city,
                                                   f"{stem}_leftImg8bit.png"), rng)
                write_gray_png(os.path.join(root, "gtFine", split, city,
                                            f"{stem}_gtFine_labelIds.png"), label_ids)
                truth[stem] = (split, image, label_ids)
    return truth


# ----- COCO-Stuff -------------------------------------------------------------------------------
def write_coco_stuff(root, rng, labels_by_split):
    """images/{train2017,val2017}/<id>.jpg + stuffthingmaps_trainval2017/<split>/<id>.png."""
    for split, labels in labels_by_split.items():
        for image_id, label in labels.items():
            write_jpeg(os.path.join(root, "images", split, f"{image_id}.jpg"), rng)
            write_gray_png(os.path.join(root, "stuffthingmaps_trainval2017", split,
                                        f"{image_id}.png"), label)
