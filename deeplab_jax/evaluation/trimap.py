"""Trimap accuracy (DeepLab-v2 §4.1.1, Fig. 10 / v1 Fig. 5): pixel accuracy near object boundaries.

For a band width w, the trimap is the set of pixels within distance w of a ground-truth boundary
(a change of label between neighbours, or VOC's 'void' band of label 255, which is drawn along
object boundaries); accuracy is the fraction of its labelled (non-255) pixels predicted correctly.
Plotted against w it shows where dense-CRF post-processing helps: the gain is largest in narrow
bands. Counts are accumulated per image on the host (distance transforms) and reduced at the end.
"""

import numpy as np
from scipy import ndimage

DEFAULT_WIDTHS = (1, 2, 4, 6, 8, 10, 15, 20, 25, 30, 35, 40)


def boundary_distance(label_HxW, ignore_label=255):
    """Euclidean distance of every pixel to the nearest boundary pixel."""
    label = np.asarray(label_HxW)
    boundary = label == ignore_label
    # Changes between two real classes; next to the void band the band itself is the boundary.
    change_h = (label[:, 1:] != label[:, :-1]) & ~boundary[:, 1:] & ~boundary[:, :-1]
    change_v = (label[1:] != label[:-1]) & ~boundary[1:] & ~boundary[:-1]
    boundary[:, 1:] |= change_h
    boundary[:, :-1] |= change_h
    boundary[1:] |= change_v
    boundary[:-1] |= change_v
    if not boundary.any():
        return np.full(label.shape, np.inf)
    return ndimage.distance_transform_edt(~boundary)


def trimap_counts(prediction_HxW, label_HxW, widths=DEFAULT_WIDTHS, ignore_label=255):
    """(correct, total) int64 arrays, one entry per band width."""
    label = np.asarray(label_HxW)
    distance = boundary_distance(label, ignore_label)
    valid = label != ignore_label
    correct_pixels = valid & (np.asarray(prediction_HxW) == label)
    correct = np.zeros(len(widths), np.int64)
    total = np.zeros(len(widths), np.int64)
    for i, width in enumerate(widths):
        band = distance <= width
        correct[i] = np.count_nonzero(band & correct_pixels)
        total[i] = np.count_nonzero(band & valid)
    return correct, total


def trimap_accuracy(correct, total):
    with np.errstate(invalid="ignore", divide="ignore"):
        return np.where(total > 0, correct / np.maximum(total, 1), np.nan)
