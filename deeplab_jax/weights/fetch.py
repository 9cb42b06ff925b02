r"""Downloads a published DeepLab model, verifies it and converts it: one command, one directory.

    python -m deeplab_jax.weights.fetch --list
    python -m deeplab_jax.weights.fetch deeplab_v2_resnet101_msc_voc12 --output=weights/v2_voc
    python -m deeplab_jax.evaluate --weights=weights/v2_voc --config=configs/voc.py
    python -m deeplab_jax.predict --weights=weights/v2_voc --input=photos/ --output=out/

The release (`weights.zoo`) is downloaded next to the output (resumed if a previous run was cut
off and the server accepts ranges), its size and checksum are checked where the publisher gives
them, archives are unpacked after refusing members that could escape the extraction directory,
the file is converted by its importer and written as a converted checkpoint whose
deeplab_model.json records the model, layout, classes, data set, URL, the sha256 computed here and
the published mIoU. The output directory appears only once all of that succeeded (it is written
under a hidden name and renamed). --mirror=URL fetches the same file names from another server or
a local folder (file:///...), e.g. on machines without internet access.
"""

import os
import posixpath
import sys
import tempfile
import uuid

from absl import app, flags, logging
from etils import epath

from deeplab_jax import cli
from deeplab_jax.data import datasets
from deeplab_jax.parallel import xla_flags
from deeplab_jax.weights import download, importer, model_info, zoo
from deeplab_jax.weights.format import save_variables, select_classes
from deeplab_jax.weights.mapping import WeightImportError


def source_url(release, mirror=None):
    """The release's URL, or the same file name under `mirror` (a directory URL)."""
    if not mirror:
        return release.url
    return mirror.rstrip("/") + "/" + posixpath.basename(release.url)


def _work_directory(output):
    """Where the download and the unpacked files go: the output's parent when it is a local
    folder (one file system, so the final rename is atomic), else the system's temp folder."""
    if "://" in str(output):
        return tempfile.gettempdir()
    parent = os.path.dirname(os.path.abspath(os.fspath(output)))
    os.makedirs(parent, exist_ok=True)
    return parent


def _weight_path(files, release, archive):
    """The file (or TF checkpoint prefix) to import among the unpacked `files`."""
    if release.source == "tf":
        candidates = sorted(f[: -len(".index")] for f in files if f.endswith(".index"))
    else:
        candidates = sorted(f for f in files if os.path.basename(f) == release.member)
    if len(candidates) != 1:
        found = [os.path.basename(c) for c in candidates]
        raise download.FetchError(
            f"{archive}: expected one {release.member!r} in the archive, found {found or 'none'}")
    return candidates[0]


def _class_names(release, num_classes):
    descriptor = datasets.DATASETS.get(release.dataset) if release.dataset else None
    if descriptor is not None and descriptor.num_classes == num_classes:
        return list(descriptor.class_names)
    return None


def convert_release(release, path, url, sha256):
    """(variables, model info, ImportReport) of the downloaded (or unpacked) file `path`."""
    variables, report = importer.import_weights(
        release.source, path, release.model, release.num_classes,
        allow_missing=release.allow_missing, strict=release.strict, **dict(release.overrides))
    num_classes = release.num_classes
    if release.class_channels:
        variables = select_classes(variables, release.class_channels, release.num_classes)
        num_classes = len(release.class_channels)
    info = model_info.make_model_info(
        release.model, num_classes, report.model_overrides, release.source, url,
        dataset=release.dataset, classes=_class_names(release, num_classes), zoo=release.name,
        kind=release.kind, sha256=sha256, checksum_published=release.checksum_text,
        published=dict(release.published), facts=release.facts)
    return variables, info, report


def fetch(release, output, *, mirror=None, progress=None, keep_download=False):
    """Downloads, verifies and converts `release` (a zoo.Release or its name) into `output`.

    Returns (output path, ImportReport). `output` must not exist; it is created only when
    everything succeeded. The downloaded file is removed afterwards unless `keep_download`.
    """
    if isinstance(release, str):
        release = zoo.get(release)
    output = epath.Path(output)
    if output.exists():
        raise FileExistsError(f"{output} already exists; choose a new --output directory")
    progress = sys.stderr.isatty() if progress is None else progress
    url = source_url(release, mirror)
    work = _work_directory(output)
    downloaded = os.path.join(work, f".{output.name}.{posixpath.basename(release.url)}")
    download.download(url, downloaded, progress=progress)
    sha256 = download.verify(downloaded, url, size_mb=release.size_mb,
                             size_tolerance=release.size_tolerance, sha256=release.sha256,
                             sha256_prefix=release.sha256_prefix)
    staging = output.parent / f".{output.name}.incomplete-{uuid.uuid4().hex[:8]}"
    try:
        with tempfile.TemporaryDirectory(dir=work, prefix=f".{output.name}.unpacked-") as unpacked:
            path = downloaded
            if release.archive:
                files = download.extract(downloaded, unpacked, release.member, release.archive)
                path = _weight_path(files, release, url)
            variables, info, report = convert_release(release, path, url, sha256)
            logging.info("%s", report.summary())
            save_variables(staging, variables, model_info=info)
        staging.rename(output)
    except BaseException:
        if staging.exists():
            staging.rmtree()
        if not keep_download:
            os.remove(downloaded)  # a file that cannot be converted is not kept by default
        raise
    if not keep_download:
        os.remove(downloaded)
    return output, report


def main(argv):
    FLAGS = flags.FLAGS
    if FLAGS.list:
        print(zoo.table())
        return 0
    if len(argv) != 2 or not FLAGS.output:
        raise app.UsageError("usage: python -m deeplab_jax.weights.fetch NAME --output=DIR "
                             f"(or --list); NAME is one of: {', '.join(zoo.ZOO)}")
    try:
        output, report = fetch(argv[1], FLAGS.output, mirror=FLAGS.mirror,
                               keep_download=FLAGS.keep_download)
    except (KeyError, FileExistsError, WeightImportError, ValueError) as error:
        message = error.args[0] if isinstance(error, KeyError) else error
        print(f"error: {message}", file=sys.stderr)
        return 1
    info = model_info.read_model_info(output)
    published = ", ".join(f"{k} {v}" for k, v in info.get("published", {}).items()) or "-"
    print(f"{report.summary()}\nwrote {output}: {info['model']} ({info['num_classes']} classes, "
          f"{info.get('dataset') or 'no data set'}), sha256 {info['sha256']}; published: "
          f"{published}")
    return 0


def define_flags():
    flags.DEFINE_string("output", None, "New directory for the converted weights.")
    flags.DEFINE_bool("list", False, "List the model zoo and exit.")
    flags.DEFINE_string("mirror", None, "Directory URL (http(s)://... or file:///...) holding the "
                        "release files under their published names, instead of the publisher.")
    flags.DEFINE_bool("keep_download", False, "Keep the downloaded file next to the output.")


def run():
    xla_flags.apply()  # before JAX starts its backends (importing modules does not start them)
    cli.run_command(define_flags, main)


if __name__ == "__main__":
    run()
