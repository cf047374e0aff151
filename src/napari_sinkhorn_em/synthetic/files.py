"""Synthetic data written to disk: the bundled sample images and batches of worms with
their truth (the ``synth`` command).
"""

from __future__ import annotations

import os
from collections.abc import Sequence
from pathlib import Path
from typing import Any

import numpy as np

from .worm import make_worm

__all__ = ["write_sample_images", "write_synthetic_worms"]


def write_sample_images(
    folder: str | os.PathLike,
    *,
    n_nuclei: int = 75,
    x_range: tuple[float, float] = (55.0, 100.0),
    seed: int = 2024,
) -> dict[str, Path]:
    """Write the bundled sample: a NeuroPAL-like head crop and its ground truth.

    Files (all written atomically):

    - ``worm_head.tif``: ImageJ hyperstack ZCYX uint16 with voxel size and
      channel names, zlib-compressed;
    - ``worm_head_labels.tif``: true labels (ZYX uint16, same voxel size);
    - ``worm_head_centres.csv``: the truth table (:meth:`SyntheticWorm.table`).

    Parameters
    ----------
    folder : str or os.PathLike
        Output folder (created if needed).
    n_nuclei : int
        Nuclei in the crop.
    x_range : (float, float)
        The crop along the worm (micrometres from the nose tip); the default is the
        nerve-ring region with the lateral, dorsal and ventral ganglia.
    seed : int
        Generator seed.

    Returns
    -------
    dict
        ``{"image": path, "labels": path, "centres": path}``.
    """
    from ..io import write_image, write_labels, write_table

    folder = Path(folder)
    folder.mkdir(parents=True, exist_ok=True)
    worm = make_worm(n_nuclei=n_nuclei, region="head", n_channels=4, x_range=x_range, seed=seed)
    image_zcyx = np.moveaxis(worm.image, 0, 1)
    paths = {
        "image": folder / "worm_head.tif",
        "labels": folder / "worm_head_labels.tif",
        "centres": folder / "worm_head_centres.csv",
    }
    write_image(
        paths["image"],
        image_zcyx,
        voxel_size=worm.voxel_size,
        axes="ZCYX",
        channel_names=worm.channel_names,
    )
    write_labels(paths["labels"], worm.labels, worm.voxel_size)
    write_table(paths["centres"], worm.table().round(4))
    return paths


def write_synthetic_worms(
    output_dir: str | os.PathLike[str],
    n: int,
    *,
    seed: int = 0,
    n_nuclei: int | None = None,
    n_channels: int = 4,
    ndim: int = 3,
    region: str = "head",
    voxel_size: Sequence[float] | None = None,
    progress_bar: bool = False,
) -> list[Path]:
    """Write synthetic worm images with their ground truth.

    For ``i = 0 .. n-1`` writes ``worm_<i>.tif`` (calibrated ImageJ TIFF, channels as
    ImageJ's C axis) into ``output_dir`` and, into ``output_dir/truth``,
    ``worm_<i>_labels.tif`` (true nuclei labels, same voxel size) and
    ``worm_<i>_centres.csv`` (:meth:`SyntheticWorm.table`: ``label``, ``z``, ``y``, ``x``
    in voxels, ``z_um``, ``y_um``, ``x_um``, ``diameter_um``, ``brightness``,
    ``colour_<channel>``; no z columns for 2-D). Worm ``i`` uses the seed
    ``derive_seed(seed, "worm_<i>")``, so worm ``i`` is the same whatever ``n``. The
    truth lives in a sub-folder so that ``segment DIR`` only picks up the images.

    Parameters
    ----------
    output_dir : path-like
        Output folder (created if needed).
    n : int
        Number of worms (>= 1).
    seed : int, default 0
        Base seed (>= 0).
    n_nuclei : int, optional
        Nuclei per worm; None = the generator's default.
    n_channels : int, default 4
        Number of channels (1-6; the last is the pan-nuclear marker).
    ndim : {2, 3}, default 3
        2-D images or 3-D stacks.
    region : {"head", "body"}, default "head"
        Dense head ganglia or a sparser mid-body piece.
    voxel_size : sequence of float, optional
        Voxel size in micrometres (``(z, y, x)`` or ``(y, x)``); None = the generator's
        default (0.8, 0.35, 0.35).
    progress_bar : bool, default False
        Show a tqdm bar on stderr.

    Returns
    -------
    list of pathlib.Path
        The image files written.
    """
    import logging
    import sys
    from collections.abc import Iterable

    from ..batch.inputs import BatchError, derive_seed
    from ..io import write_image, write_labels, write_table

    logger = logging.getLogger("napari_sinkhorn_em.batch")
    if isinstance(n, bool) or not isinstance(n, (int, np.integer)) or n < 1:
        raise BatchError(f"n must be a positive integer, got {n!r}")
    if ndim not in (2, 3):
        raise BatchError(f"ndim must be 2 or 3, got {ndim!r}")
    derive_seed(seed, "")  # validates the seed
    out = Path(output_dir).expanduser()
    truth = out / "truth"
    truth.mkdir(parents=True, exist_ok=True)
    width = max(3, len(str(n - 1)))
    kwargs: dict[str, Any] = {"ndim": ndim, "n_channels": n_channels, "region": region}
    if voxel_size is not None:
        kwargs["voxel_size"] = tuple(float(v) for v in voxel_size)
    if n_nuclei is not None:
        kwargs["n_nuclei"] = n_nuclei
    written = []
    names = [f"worm_{i:0{width}d}" for i in range(n)]
    iterator: Iterable[str] = names
    if progress_bar:
        from tqdm.auto import tqdm

        iterator = tqdm(names, desc="worms", unit="worm", file=sys.stderr)
    for name in iterator:
        worm = make_worm(seed=derive_seed(seed, name), **kwargs)
        spatial = "ZYX"[3 - ndim :]
        if worm.channel_axis is None:
            axes = spatial
        else:
            axes = spatial[: worm.channel_axis] + "C" + spatial[worm.channel_axis :]
        path = out / f"{name}.tif"
        write_image(
            path,
            worm.image,
            voxel_size=worm.voxel_size,
            axes=axes,
            channel_names=None if worm.channel_axis is None else list(worm.channel_names),
        )
        write_labels(truth / f"{name}_labels.tif", worm.labels, worm.voxel_size)
        write_table(truth / f"{name}_centres.csv", worm.table())
        written.append(path)
        logger.info("wrote %s (%d nuclei) and its truth", path, worm.n_nuclei)
    return written
