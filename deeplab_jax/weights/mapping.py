"""Shared machinery of the weight importers: layout changes, validation, and the import report.

Every importer (Caffe, PyTorch, TF) turns its file into a list of `Assignment`s — "source tensor S
goes to our variable P, after this layout change" — plus the source tensors it deliberately ignores
(with the reason). `fill_variables` then checks the assignments against the variables of the target
model (names and shapes, from `jax.eval_shape`, so nothing is computed), and returns the filled
variables together with an `ImportReport` that lists what was assigned, what the model needs but the
file lacks (missing), and what the file holds but nothing used (unused). Missing, unused and
mis-shaped tensors raise a `WeightImportError` listing them all, unless allowed:

  allow_missing: patterns (regular expressions over our paths such as 'params/head/c0/kernel', or
    the shorthand 'head') whose variables may be absent from the file or have another shape there
    (e.g. a classifier trained for another number of classes, or an ImageNet backbone with no
    segmentation head); they keep a fresh initialisation (`seed`).
  strict=False: unused source tensors are reported but do not raise.

Our paths are '/'-joined: 'params/backbone/stem/conv1/conv/kernel', 'batch_stats/.../bn/mean'.
"""

import dataclasses
import re

import numpy as np
from flax import traverse_util

# Shorthands accepted in `allow_missing`.
PATH_SHORTHANDS = {
    "head": r"^(params|batch_stats)/head/",
    "backbone": r"^(params|batch_stats)/backbone/",
}
# How many names an error message lists before it says "and N more".
MAX_LISTED = 40


class WeightImportError(ValueError):
    """A weight file that cannot be imported into the requested model (names, shapes, format)."""


def oihw_to_hwio(kernel_OxIxHxW):
    """PyTorch/Caffe conv kernel (out, in, kh, kw) -> Flax/lax HWIO (kh, kw, in, out)."""
    kernel = np.asarray(kernel_OxIxHxW)
    if kernel.ndim != 4:
        raise WeightImportError(f"expected a 4-d OIHW conv kernel, got shape {kernel.shape}")
    return np.ascontiguousarray(np.transpose(kernel, (2, 3, 1, 0)))


def identity(array):
    return np.asarray(array)


@dataclasses.dataclass(frozen=True)
class Assignment:
    """Source tensor `source` (its name in the file) -> our variable `target` after `transform`."""

    target: str
    source: str
    array: np.ndarray
    transform: object = identity


@dataclasses.dataclass
class ImportReport:
    """What an import did; `summary()` is what the CLI prints."""

    file: str
    assigned: dict  # our path -> source name
    missing: list  # our paths left at their fresh initialisation (allowed)
    unused: list  # (source name, reason)
    ignored: list  # (source name, reason): deliberately skipped (ImageNet fc, MSC copies, ...)
    model_overrides: dict = dataclasses.field(default_factory=dict)  # what the model was built with

    def summary(self):
        lines = [
            f"{self.file}: {len(self.assigned)} tensors imported, {len(self.missing)} missing "
            f"(freshly initialised), {len(self.unused)} unused, {len(self.ignored)} ignored"
        ]
        lines += [f"  missing: {path}" for path in _clip(self.missing)]
        lines += [f"  unused:  {name} ({why})" for name, why in _clip(self.unused)]
        lines += [f"  ignored: {name} ({why})" for name, why in _clip(self.ignored)]
        return "\n".join(lines)


def _clip(items):
    items = list(items)
    if len(items) <= MAX_LISTED:
        return items
    rest = len(items) - MAX_LISTED
    return items[:MAX_LISTED] + [(f"... and {rest} more", "") if isinstance(items[0], tuple)
                                 else f"... and {rest} more"]


def flatten(tree):
    """Nested dict -> {'a/b/c': leaf}."""
    return traverse_util.flatten_dict(tree, sep="/")


def unflatten(flat):
    """{'a/b/c': leaf} -> nested plain dicts."""
    return traverse_util.unflatten_dict(flat, sep="/")


def compile_patterns(allow_missing):
    """Regular expressions from `allow_missing` (a string, or a sequence; shorthands expanded)."""
    if allow_missing is None:
        return []
    if isinstance(allow_missing, str):
        allow_missing = [p for p in allow_missing.split(",") if p]
    patterns = []
    for pattern in allow_missing:
        try:
            patterns.append(re.compile(PATH_SHORTHANDS.get(pattern, pattern)))
        except re.error as error:
            raise ValueError(
                f"allow_missing pattern {pattern!r} is not a valid regular expression ({error}); "
                f"use a regex over paths such as 'params/head/' or one of {tuple(PATH_SHORTHANDS)}"
            ) from None
    return patterns


def _allowed(path, patterns):
    return any(p.search(path) for p in patterns)


def fill_variables(
    template, assignments, ignored=(), unused=(), *, file, model_name, allow_missing=(),
    strict=True, init_fn=None,
):
    """Validates `assignments` against `template` and returns (variables, ImportReport).

    template: the model's variables as a nested dict of arrays or `jax.ShapeDtypeStruct`s.
    assignments: iterable of `Assignment`. ignored, unused: iterables of (source name, reason): the
    tensors the importer skipped on purpose, and those it could not map to any of our names.
    init_fn: (paths) -> {path: freshly initialised value} for those of our paths, called only if
    allowed variables are missing.
    """
    shapes = {path: (tuple(leaf.shape), np.dtype(leaf.dtype)) for path, leaf in
              flatten(template).items()}
    patterns = compile_patterns(allow_missing)
    filled, assigned, unused, ignored, problems = {}, {}, list(unused), list(ignored), []
    duplicates = []
    for item in assignments:
        if item.target not in shapes:
            unused.append((item.source, f"the model has no variable {item.target}"))
            continue
        if item.target in filled:
            duplicates.append(f"{item.target} <- {assigned[item.target]} and {item.source}")
            continue
        try:
            value = np.asarray(item.transform(item.array))
        except WeightImportError as error:
            problems.append(f"{item.source} -> {item.target}: {error}")
            continue
        shape, dtype = shapes[item.target]
        if tuple(value.shape) != shape:
            why = (f"shape {tuple(value.shape)} (from {tuple(np.shape(item.array))} in the file) "
                   f"!= model's {shape}")
            if _allowed(item.target, patterns):  # allowed: e.g. another number of classes
                ignored.append((item.source, f"{why}; {item.target} kept freshly initialised"))
            else:
                problems.append(f"{item.source} -> {item.target}: {why}")
            continue
        if not np.all(np.isfinite(value)):
            problems.append(f"{item.source} -> {item.target}: holds NaN or infinite values")
            continue
        filled[item.target] = value.astype(dtype, copy=False)
        assigned[item.target] = item.source
    missing = sorted(set(shapes) - set(filled))
    not_allowed = [path for path in missing if not _allowed(path, patterns)]
    errors = []
    if duplicates:
        errors.append(_listing("variables assigned twice", duplicates))
    if problems:
        errors.append(_listing("tensors that do not fit", problems))
    if not_allowed:
        errors.append(_listing(
            "variables missing from the file", not_allowed,
            hint="pass allow_missing=('head',) (CLI --allow_missing=head) or a regex over these "
                 "paths to keep them freshly initialised, e.g. when the classifier has another "
                 "number of classes or the file is an ImageNet backbone"))
    if unused and strict:
        errors.append(_listing(
            "tensors in the file that the model does not use",
            [f"{name} ({why})" for name, why in unused],
            hint="check --model and its overrides (layers, widths, num_classes); pass "
                 "strict=False (CLI --nostrict) to import anyway"))
    if errors:
        raise WeightImportError(
            f"cannot import {file} into model {model_name!r}:\n" + "\n".join(errors))
    if missing:
        fresh = init_fn(missing) if init_fn is not None else {}
        for path in missing:
            if path not in fresh:
                raise WeightImportError(f"{file}: {path} is missing and no initialiser was given")
            filled[path] = np.asarray(fresh[path])
    report = ImportReport(file=str(file), assigned=assigned, missing=missing, unused=unused,
                          ignored=ignored)
    return unflatten(filled), report


def _listing(title, items, hint=None):
    shown = items[:MAX_LISTED]
    lines = [f"  {len(items)} {title}:"] + [f"    {item}" for item in shown]
    if len(items) > MAX_LISTED:
        lines.append(f"    ... and {len(items) - MAX_LISTED} more")
    if hint:
        lines.append(f"  -> {hint}")
    return "\n".join(lines)


# PyTorch BatchNorm leaves -> (collection, our leaf).
BN_LEAVES = {
    "weight": ("params", "scale"),
    "bias": ("params", "bias"),
    "running_mean": ("batch_stats", "mean"),
    "running_var": ("batch_stats", "var"),
}


def bn_assignment(unit, leaf, source, array):
    """Our BatchNorm `unit` (e.g. 'backbone/stem/conv1/bn') <- a PyTorch-named BN leaf."""
    if leaf not in BN_LEAVES:
        raise KeyError(leaf)
    collection, ours = BN_LEAVES[leaf]
    return Assignment(f"{collection}/{unit}/{ours}", source, array)


def conv_assignment(unit, leaf, source, array):
    """Our Conv `unit` (e.g. 'head/c0') <- 'weight' (OIHW, transposed to HWIO) or 'bias'."""
    if leaf == "weight":
        return Assignment(f"params/{unit}/kernel", source, array, oihw_to_hwio)
    if leaf == "bias":
        return Assignment(f"params/{unit}/bias", source, array)
    raise KeyError(leaf)
