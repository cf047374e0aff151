"""Loaders for the real microscopy with truth kept in ``../shared/realdata``.

The data are not part of this repository (see ``/work/shared/realdata/README.md``); they are
read from a folder resolved in this order:

1. the ``root`` argument of every loader;
2. the environment variable ``NAPARI_SINKHORN_EM_REALDATA``;
3. ``<project root>/../shared/realdata`` (the project root is the folder holding ``src/``).

:func:`available` tells whether a set is there (tests skip on ``False``); the loaders raise
:class:`RealDataMissing` (a :class:`FileNotFoundError`) naming the folder otherwise.

Two sets
--------
**targettrack** (``targettrack/ex2`` .. ``ex6``, rahi-lab/targettrack, MIT): two frames per
example of a moving adult C. elegans head, ``frame_{gt,tar}.npy`` uint8 ``(C=2, x, y, z)`` =
``(2, 256, 160, 16)``, and hand-placed neuron centres ``pts_{gt,tar}.npy`` ``(85, 3)`` in
voxel ``(x, y, z)``; NaN rows are neurons not annotated in that frame, and row ``i`` is the
same neuron in both frames. :func:`load_targettrack` returns the image as ``(C, z, y, x)``,
the centres as ``(z, y, x)``.

* **Nuclear channel = channel 0.** Measured on ex2, ex4 and ex6 (gt frames): 87-99 % of the
  annotated centres fall on non-zero voxels of channel 0 (the images were DoG-filtered with
  the background set to 0) against 44-68 % for channel 1; channel 0 has 60-220 connected
  blobs of median 1-5 voxels, channel 1 450-730 one- or two-voxel specks; the mean
  channel-0 value at the annotated centres is 34-56 against 9-18 in channel 1.
* **Voxel size (not stated) = (z, y, x) = (2.0, 0.5, 0.5) um**, estimated from anatomy:

  - *z*: the annotated neurons span 10-13 of the 16 planes (median 10.3). In an adult head
    (25-35 um thick at the nerve ring) the neurons fill the thickness minus the cuticle and
    muscle wall (~2-3 um a side), ~20-30 um, hence 1.7-2.6 um per plane; 16 planes of
    2 um = 32 um cover the head's thickness, as the README says.
  - *x, y*: at 0.5 um the annotated neurons span a median 91 um along the worm (x; from
    the anterior ganglion to the retrovesicular ganglion / start of the ventral cord is
    ~90-110 um in adults) and 30 um dorsal-ventrally (y; the head is ~30 um across, the
    frames include some bending).
  - *Spacing*: with (2.0, 0.5, 0.5) the median nearest-neighbour distance of the
    annotated centres is 3.35 um; nuclei of ~2 um packed in ganglia sit ~2.5-3 um apart and
    only 64-83 of the ~150 head neurons in view are annotated, which spreads the annotated
    ones by ~(150/80)^(1/3) = 1.2x: 3.0-3.6 um expected. (0.4 um pixels give 2.7 um, 0.6 um
    give 3.9 um.)
  - *Blob size*: the intensity standard deviation around an annotated centre is ~0.8
    planes (1.6 um) in z and 1.6-1.9 pixels (0.8-0.95 um) in y/x (window of 5 x 9 x 9,
    inflated by neighbours), i.e. a ~2 um nucleus blurred by a wider axial PSF.

  The estimate is uncertain by about +-30 %; pass ``voxel_size=`` to use another.
* **The "gt" frames' points sit ~0.75-1 plane deeper than their nuclei.** Sampling the
  (lightly smoothed) nuclear channel at the annotated points shifted by a constant, the
  mean intensity is highest at a z shift of -1.0 / -0.75 / -0.75 / -0.75 planes for
  ex2 / ex3 / ex4 / ex6 gt (+28-39 % over the points as stored) and at 0 / -0.25 planes
  for every "tar" frame (+0-3 %); in y and x the best shift is 0-0.5 pixel everywhere.
  At 2 um per plane that offset (1.5-2 um) is as large as half the spacing of the
  neurons, so a detector on the nuclei fails to match a stored gt point. The loaders
  keep the stored points (``z_offset=0``); :data:`TARGETTRACK_GT_Z_OFFSET` (-0.75
  planes) is the measured correction, used by ``benchmarks/bench_real.py`` for the gt
  frames (which reports the score against the stored points too).
* ``ex3/frame_gt`` and ``ex5/frame_gt`` are the same frame with the same points;
  :func:`targettrack_frames` drops the duplicate (``unique=True``).

**qcanet** (``qcanet/``, funalab/QCANet, MIT): mouse embryos at the 8- and 16-cell stage,
raw uint16 ``(Z=51, Y=120, X=122)`` and binary nucleus masks (connected nuclei), labelled
here with :func:`scipy.ndimage.label` (8 and 16 nuclei).

* **Voxel size = (z, y, x) = (1.744, 0.8, 0.8) um.** The stated z : xy anisotropy is 2.18;
  the absolute size is not stated. The masks hold 1024-3148 voxels per nucleus, i.e. an
  equivalent-sphere diameter of 16.2-23.6 pixels in xy units (``(6 V 2.18 / pi)^(1/3)``);
  early mouse blastomere nuclei are 10-20 um across, and 0.8 um pixels put them at
  13-19 um (median 8-cell 16.8 um, 16-cell 15.3 um, shrinking with cleavage as expected)
  and the 120 x 122-pixel field at 96 x 98 um, just larger than a ~80-100 um embryo.
  0.8 um x 2.18 = 1.744 um per plane (1.75 um / 0.8 um = 2.19 is the ratio stated).
"""

from __future__ import annotations

import os
from dataclasses import dataclass, field
from pathlib import Path

import numpy as np

from .metrics import label_centroids

__all__ = [
    "ENV_VAR",
    "QCANET_STAGES",
    "QCANET_VOXEL_SIZE",
    "TARGETTRACK_EXAMPLES",
    "TARGETTRACK_GT_Z_OFFSET",
    "TARGETTRACK_NUCLEAR_CHANNEL",
    "TARGETTRACK_VOXEL_SIZE",
    "QCANetStack",
    "RealDataMissing",
    "TargetTrackFrame",
    "available",
    "default_root",
    "load_qcanet",
    "load_targettrack",
    "qcanet_stacks",
    "targettrack_frames",
    "targettrack_pair",
]

#: Environment variable that overrides the data folder.
ENV_VAR = "NAPARI_SINKHORN_EM_REALDATA"
#: Estimated (z, y, x) voxel size of the targettrack frames in um (see the module docs).
TARGETTRACK_VOXEL_SIZE = (2.0, 0.5, 0.5)
#: Channel of the targettrack frames that carries the nuclei.
TARGETTRACK_NUCLEAR_CHANNEL = 0
#: Measured z offset (planes) to add to the "gt" frames' points to put them on their nuclei.
TARGETTRACK_GT_Z_OFFSET = -0.75
TARGETTRACK_EXAMPLES = (2, 3, 4, 5, 6)
TARGETTRACK_FRAMES = ("gt", "tar")
#: (z, y, x) voxel size of the QCANet stacks in um: 0.8 um pixels, z = 2.18 x 0.8.
QCANET_VOXEL_SIZE = (2.18 * 0.8, 0.8, 0.8)
QCANET_STAGES = (8, 16)


class RealDataMissing(FileNotFoundError):
    """The real-data folder (or a file in it) is not there."""


def default_root() -> Path:
    """The data folder: ``$NAPARI_SINKHORN_EM_REALDATA`` or ``<project>/../shared/realdata``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    # realdata.py -> evaluation -> napari_sinkhorn_em -> src -> project root
    project = Path(__file__).resolve().parents[3]
    return (project / ".." / "shared" / "realdata").resolve()


def _root(root) -> Path:
    return default_root() if root is None else Path(root).expanduser()


def _targettrack_files(root: Path, example: int, frame: str) -> tuple[Path, Path]:
    d = root / "targettrack" / f"ex{example}"
    return d / f"frame_{frame}.npy", d / f"pts_{frame}.npy"


def _qcanet_files(root: Path, stage: int) -> tuple[Path, Path]:
    d = root / "qcanet"
    name = f"{stage}_cell_stage.tif"
    return d / "images_raw" / name, d / "images_nsn" / name


def available(dataset: str | None = None, root=None) -> bool:
    """Whether the real data (``"targettrack"``, ``"qcanet"`` or both when None) is present.

    Parameters
    ----------
    dataset : {"targettrack", "qcanet"}, optional
        The set to check; None checks both.
    root : str or os.PathLike, optional
        Data folder (default :func:`default_root`).

    Returns
    -------
    bool
        True when every file the loaders of that set read exists.
    """
    r = _root(root)
    if dataset not in (None, "targettrack", "qcanet"):
        raise ValueError(f"dataset must be 'targettrack', 'qcanet' or None, got {dataset!r}")
    files: list[Path] = []
    if dataset in (None, "targettrack"):
        for ex in TARGETTRACK_EXAMPLES:
            for fr in TARGETTRACK_FRAMES:
                files.extend(_targettrack_files(r, ex, fr))
    if dataset in (None, "qcanet"):
        for st in QCANET_STAGES:
            files.extend(_qcanet_files(r, st))
    return all(f.is_file() for f in files)


def _require(path: Path) -> Path:
    if not path.is_file():
        raise RealDataMissing(
            f"real-data file {path} not found; put the data in {default_root()} or set "
            f"{ENV_VAR} to the folder holding targettrack/ and qcanet/"
        )
    return path


@dataclass
class TargetTrackFrame:
    """One annotated frame of the targettrack worm-head recordings.

    Attributes
    ----------
    name : str
        ``"ex<N>/<frame>"``, e.g. ``"ex2/gt"``.
    image : numpy.ndarray
        uint8 ``(C=2, Z=16, Y=160, X=256)``; channel :attr:`nuclear_channel` holds nuclei.
    channel_axis : int
        Always 0.
    nuclear_channel : int
        The channel with the nuclei (0).
    voxel_size : tuple of float
        ``(z, y, x)`` in micrometres (estimated, see the module docs).
    points : numpy.ndarray
        ``(85, 3)`` all annotation rows in voxel ``(z, y, x)``, NaN where the neuron is not
        annotated in this frame; row ``i`` is the same neuron in both frames of an example.
    rows : numpy.ndarray
        Indices of the annotated (finite) rows of :attr:`points`.
    """

    name: str
    image: np.ndarray
    channel_axis: int
    nuclear_channel: int
    voxel_size: tuple[float, ...]
    points: np.ndarray
    rows: np.ndarray = field(default_factory=lambda: np.zeros(0, dtype=np.intp))

    @property
    def centres(self) -> np.ndarray:
        """``(n, 3)`` annotated centres (voxel ``(z, y, x)``), NaN rows dropped."""
        return self.points[self.rows]

    @property
    def nuclei(self) -> np.ndarray:
        """The nuclear channel, ``(Z, Y, X)`` uint8."""
        return self.image[self.nuclear_channel]

    @property
    def n_nuclei(self) -> int:
        """Number of annotated neurons in this frame."""
        return int(self.rows.size)


def load_targettrack(
    example: int,
    frame: str = "gt",
    *,
    root=None,
    voxel_size: tuple[float, float, float] = TARGETTRACK_VOXEL_SIZE,
    z_offset: float = 0.0,
) -> TargetTrackFrame:
    """Load one targettrack frame with its annotated neuron centres.

    Parameters
    ----------
    example : int
        Example number, 2 to 6.
    frame : {"gt", "tar"}
        Which of the two frames.
    root : str or os.PathLike, optional
        Data folder (default :func:`default_root`).
    voxel_size : (float, float, float)
        ``(z, y, x)`` in micrometres to attach (default: the estimate of the module docs).
    z_offset : float
        Planes added to the z coordinate of every point (0 = as stored; see
        :data:`TARGETTRACK_GT_Z_OFFSET` for the gt frames).

    Returns
    -------
    TargetTrackFrame
        Image ``(C, z, y, x)`` and centres ``(z, y, x)``.
    """
    if example not in TARGETTRACK_EXAMPLES:
        raise ValueError(
            f"targettrack example must be one of {TARGETTRACK_EXAMPLES}, got {example!r}"
        )
    if frame not in TARGETTRACK_FRAMES:
        raise ValueError(f"targettrack frame must be 'gt' or 'tar', got {frame!r}")
    fimg, fpts = _targettrack_files(_root(root), example, frame)
    a = np.load(_require(fimg))
    if a.ndim != 4 or a.shape[0] != 2:
        raise ValueError(f"{fimg}: expected (C=2, x, y, z), got shape {a.shape}")
    image = np.ascontiguousarray(np.transpose(a, (0, 3, 2, 1)))
    p = np.load(_require(fpts)).astype(np.float64)
    if p.ndim != 2 or p.shape[1] != 3:
        raise ValueError(f"{fpts}: expected (n, 3) points (x, y, z), got shape {p.shape}")
    points = np.ascontiguousarray(p[:, ::-1])
    points[:, 0] += float(z_offset)
    rows = np.flatnonzero(np.all(np.isfinite(points), axis=1))
    return TargetTrackFrame(
        name=f"ex{example}/{frame}",
        image=image,
        channel_axis=0,
        nuclear_channel=TARGETTRACK_NUCLEAR_CHANNEL,
        voxel_size=tuple(float(v) for v in voxel_size),
        points=points,
        rows=rows,
    )


def targettrack_pair(example: int, *, root=None, **kw) -> tuple[TargetTrackFrame, TargetTrackFrame]:
    """Both frames of one example: ``(gt, tar)``; ``points`` row ``i`` is the same neuron.

    Tracking truth: rows finite in both frames, ``np.intersect1d(gt.rows, tar.rows)``.
    """
    return (
        load_targettrack(example, "gt", root=root, **kw),
        load_targettrack(example, "tar", root=root, **kw),
    )


def targettrack_frames(*, root=None, unique: bool = True, **kw) -> list[TargetTrackFrame]:
    """All targettrack frames (ex2..ex6, gt then tar).

    Parameters
    ----------
    root : str or os.PathLike, optional
        Data folder.
    unique : bool
        Drop frames identical (image and points) to an earlier one: ``ex5/gt`` repeats
        ``ex3/gt``, which would count twice in a segmentation score. 9 frames instead of 10.
    **kw
        Passed to :func:`load_targettrack` (``voxel_size``).
    """
    out: list[TargetTrackFrame] = []
    for ex in TARGETTRACK_EXAMPLES:
        for fr in TARGETTRACK_FRAMES:
            f = load_targettrack(ex, fr, root=root, **kw)
            if unique and any(
                np.array_equal(f.image, g.image)
                and np.array_equal(f.points, g.points, equal_nan=True)
                for g in out
            ):
                continue
            out.append(f)
    return out


@dataclass
class QCANetStack:
    """A QCANet mouse-embryo stack with instance truth.

    Attributes
    ----------
    name : str
        ``"qcanet 8-cell"`` or ``"qcanet 16-cell"``.
    stage : int
        8 or 16.
    image : numpy.ndarray
        Raw fluorescence, uint16 ``(Z=51, Y=120, X=122)``.
    voxel_size : tuple of float
        ``(z, y, x)`` in micrometres (``QCANET_VOXEL_SIZE``, see the module docs).
    labels : numpy.ndarray
        int32 instance labels (``scipy.ndimage.label`` of the binary mask, 6-connected).
    centres : numpy.ndarray
        ``(n, 3)`` voxel centroids of the labels (row ``i`` = label ``i + 1``).
    """

    name: str
    stage: int
    image: np.ndarray
    voxel_size: tuple[float, ...]
    labels: np.ndarray
    centres: np.ndarray

    @property
    def n_nuclei(self) -> int:
        """Number of labelled nuclei."""
        return int(self.centres.shape[0])


def load_qcanet(
    stage: int,
    *,
    root=None,
    voxel_size: tuple[float, float, float] = QCANET_VOXEL_SIZE,
) -> QCANetStack:
    """Load a QCANet embryo stack (8- or 16-cell stage) with labelled nucleus masks.

    Parameters
    ----------
    stage : {8, 16}
        Cell stage.
    root : str or os.PathLike, optional
        Data folder (default :func:`default_root`).
    voxel_size : (float, float, float)
        ``(z, y, x)`` in micrometres to attach.

    Returns
    -------
    QCANetStack
        Image, labels (8 or 16 nuclei) and their centroids.
    """
    import tifffile
    from scipy import ndimage as ndi

    if stage not in QCANET_STAGES:
        raise ValueError(f"qcanet stage must be one of {QCANET_STAGES}, got {stage!r}")
    fraw, fmask = _qcanet_files(_root(root), stage)
    image = tifffile.imread(_require(fraw))
    mask = tifffile.imread(_require(fmask))
    if image.shape != mask.shape or image.ndim != 3:
        raise ValueError(
            f"{fraw} and {fmask}: expected two 3-D stacks of one shape, got "
            f"{image.shape} and {mask.shape}"
        )
    labels = ndi.label(mask > 0)[0].astype(np.int32)
    centres = label_centroids(labels)
    return QCANetStack(
        name=f"qcanet {stage}-cell",
        stage=int(stage),
        image=image,
        voxel_size=tuple(float(v) for v in voxel_size),
        labels=labels,
        centres=centres.reshape(-1, 3),
    )


def qcanet_stacks(*, root=None, **kw) -> list[QCANetStack]:
    """Both QCANet stacks (8-cell, 16-cell)."""
    return [load_qcanet(s, root=root, **kw) for s in QCANET_STAGES]
