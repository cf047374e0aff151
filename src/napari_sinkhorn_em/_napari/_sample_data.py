"""napari sample data: the bundled synthetic worm head and its ground-truth labels.

The files live in the package folder ``napari_sinkhorn_em/sample_images/`` (a symlink to
the repository's top-level ``sample_images/`` in a checkout, a copy in the wheel) and are
located with :mod:`importlib.resources`. This module imports neither napari nor Qt.
"""

from __future__ import annotations

from contextlib import AbstractContextManager
from importlib.resources import as_file, files
from pathlib import Path
from typing import Any

from napari_sinkhorn_em._napari._reader import read_tiff
from napari_sinkhorn_em.io import read_image

__all__ = ["sample_path", "worm_head", "worm_head_labels"]

LayerData = tuple[Any, dict[str, Any], str]

WORM_HEAD = "worm_head.tif"
WORM_HEAD_LABELS = "worm_head_labels.tif"


def sample_path(name: str) -> AbstractContextManager[Path]:
    """Context manager giving a real file path of a bundled sample image.

    Parameters
    ----------
    name : str
        File name inside ``napari_sinkhorn_em/sample_images/``, e.g. ``"worm_head.tif"``.

    Returns
    -------
    context manager yielding pathlib.Path

    Raises
    ------
    FileNotFoundError
        If the package does not contain the file (broken installation).
    """
    resource = files("napari_sinkhorn_em").joinpath("sample_images").joinpath(name)
    if not resource.is_file():
        raise FileNotFoundError(
            f"sample image {name!r} is missing from the installed package "
            f"(looked in {resource}); reinstall napari-sinkhorn-em"
        )
    return as_file(resource)


def worm_head() -> list[LayerData]:
    """Synthetic C. elegans head stack, one image layer per channel, scale in micrometres.

    Returns
    -------
    list of (data, kwargs, "image") tuples
    """
    with sample_path(WORM_HEAD) as path:
        return read_tiff(path, split_channels=True)


def worm_head_labels() -> list[LayerData]:
    """Ground-truth nucleus labels of the synthetic worm head, scale in micrometres.

    Returns
    -------
    list with one (data, kwargs, "labels") tuple
    """
    with sample_path(WORM_HEAD_LABELS) as path:
        img = read_image(path)
    kwargs = {
        "name": "worm_head truth",
        "scale": tuple(img.voxel_size) if img.voxel_size is not None else None,
        "metadata": {"source_path": str(img.path), "voxel_size_um": img.voxel_size},
    }
    if kwargs["scale"] is None:
        del kwargs["scale"]
    return [(img.data, kwargs, "labels")]
