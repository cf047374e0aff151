"""Real data with truth fetched from the Python package index, for tests and benchmarks.

**DSB 2018 test image** (:func:`load_dsb2018`): a real 2-D fluorescence image of 125
nuclei of mixed sizes (512 x 512 pixels, equivalent diameters 11-28 px, median 24 px) with
its instance masks, from the 2018 Data Science Bowl (Caicedo et al., Nature Methods 16,
2019), as shipped inside the ``stardist`` wheel (BSD-3-Clause; files
``stardist/data/images/img2d.tif`` and ``mask2d.tif``). Nothing of it is stored in this
repository: :func:`fetch_dsb2018` downloads the wheel with ``pip download --no-deps`` (no
install, no TensorFlow) and extracts the two TIFF files into a cache folder; the loader
then reads them from, in this order:

1. the ``root`` argument;
2. the environment variable ``NAPARI_SINKHORN_EM_EXTERNAL``;
3. ``$XDG_CACHE_HOME/napari-sinkhorn-em/external`` (``~/.cache/...`` by default);
4. an installed ``stardist`` package's own data folder.

:func:`dsb2018_available` tells whether it is there (tests skip on ``False``). The image
has no stated pixel size: use ``voxel_size=(1, 1)`` (pixel units).

``python tools/fetch_external_data.py`` fetches it (``tools/test.sh`` does, so the test
suite scores the real image in CI; without network access the tests skip).
"""

from __future__ import annotations

import os
import shutil
import subprocess
import sys
import tempfile
import zipfile
from dataclasses import dataclass
from pathlib import Path

import numpy as np

from .metrics import label_centroids

__all__ = [
    "DSB2018_FILES",
    "ENV_VAR",
    "STARDIST_VERSION",
    "DSB2018Image",
    "default_cache",
    "dsb2018_available",
    "fetch_dsb2018",
    "load_dsb2018",
]

#: Environment variable that overrides the external-data folder.
ENV_VAR = "NAPARI_SINKHORN_EM_EXTERNAL"
#: The stardist release whose wheel carries the image (any platform's wheel holds it).
STARDIST_VERSION = "0.9.2"
#: (image, masks) paths inside the stardist wheel.
DSB2018_FILES = ("stardist/data/images/img2d.tif", "stardist/data/images/mask2d.tif")
_SUBDIR = "dsb2018"


def default_cache() -> Path:
    """``$NAPARI_SINKHORN_EM_EXTERNAL`` or ``$XDG_CACHE_HOME/napari-sinkhorn-em/external``."""
    env = os.environ.get(ENV_VAR)
    if env:
        return Path(env).expanduser()
    base = os.environ.get("XDG_CACHE_HOME") or str(Path.home() / ".cache")
    return Path(base).expanduser() / "napari-sinkhorn-em" / "external"


def _stardist_folder() -> Path | None:
    import importlib.util

    try:
        spec = importlib.util.find_spec("stardist")
    except (ImportError, ValueError):
        return None
    if spec is None or not spec.submodule_search_locations:
        return None
    return Path(next(iter(spec.submodule_search_locations))) / "data" / "images"


def _candidates(root) -> list[Path]:
    if root is not None:
        return [Path(root).expanduser() / _SUBDIR]
    out = [default_cache() / _SUBDIR]
    sd = _stardist_folder()
    if sd is not None:
        out.append(sd)
    return out


def _files(folder: Path) -> tuple[Path, Path]:
    return folder / Path(DSB2018_FILES[0]).name, folder / Path(DSB2018_FILES[1]).name


def dsb2018_available(root=None) -> bool:
    """Whether the DSB 2018 image and masks are present (see the module docs)."""
    return any(all(f.is_file() for f in _files(c)) for c in _candidates(root))


@dataclass
class DSB2018Image:
    """The DSB 2018 test image of the stardist wheel.

    Attributes
    ----------
    image : numpy.ndarray
        uint16 ``(512, 512)`` fluorescence.
    labels : numpy.ndarray
        int32 instance masks (125 nuclei).
    centres : numpy.ndarray
        ``(125, 2)`` pixel centroids of the masks (row ``i`` = the i-th label in
        increasing order).
    voxel_size : tuple of float
        ``(1.0, 1.0)``: pixel units (no pixel size is stated).
    source : pathlib.Path
        The folder the files were read from.
    """

    image: np.ndarray
    labels: np.ndarray
    centres: np.ndarray
    voxel_size: tuple[float, float]
    source: Path

    name = "DSB 2018 2-D (stardist test image)"

    @property
    def n_nuclei(self) -> int:
        """Number of labelled nuclei."""
        return int(self.centres.shape[0])


def load_dsb2018(root=None) -> DSB2018Image:
    """Read the DSB 2018 test image and its masks.

    Parameters
    ----------
    root : str or os.PathLike, optional
        Folder holding ``dsb2018/img2d.tif`` and ``dsb2018/mask2d.tif`` (default: see the
        module docs).

    Returns
    -------
    DSB2018Image

    Raises
    ------
    FileNotFoundError
        Naming the folders searched and how to fetch the files.
    ValueError
        When the files are not a 2-D image and masks of one shape.
    """
    import tifffile

    for folder in _candidates(root):
        fimg, fmask = _files(folder)
        if fimg.is_file() and fmask.is_file():
            break
    else:
        searched = ", ".join(str(c) for c in _candidates(root))
        raise FileNotFoundError(
            f"DSB 2018 test image not found in {searched}; run "
            f"`python tools/fetch_external_data.py` (downloads the stardist wheel from PyPI)"
        )
    image = tifffile.imread(fimg)
    masks = tifffile.imread(fmask)
    if image.ndim != 2 or image.shape != masks.shape:
        raise ValueError(
            f"{fimg} and {fmask}: expected a 2-D image and masks of one shape, got "
            f"{image.shape} and {masks.shape}"
        )
    ids = np.unique(masks)
    ids = ids[ids > 0]
    labels = np.zeros(masks.shape, dtype=np.int32)
    for i, v in enumerate(ids, start=1):
        labels[masks == v] = i
    centres = label_centroids(labels)
    return DSB2018Image(image, labels, centres, (1.0, 1.0), folder)


def fetch_dsb2018(dest=None, *, version: str = STARDIST_VERSION, quiet: bool = True) -> Path:
    """Download the stardist wheel from PyPI and extract the DSB 2018 image and masks.

    Only ``pip download --no-deps`` runs (nothing is installed). The files are written to
    a temporary name and renamed, so an interrupted fetch leaves no partial file.

    Parameters
    ----------
    dest : str or os.PathLike, optional
        Folder to put ``dsb2018/`` in (default :func:`default_cache`).
    version : str
        stardist release to download.
    quiet : bool
        Pass ``-q`` to pip.

    Returns
    -------
    pathlib.Path
        The folder holding ``img2d.tif`` and ``mask2d.tif``.

    Raises
    ------
    RuntimeError
        When pip fails (e.g. no network) or the wheel lacks the files.
    """
    out = (Path(dest).expanduser() if dest is not None else default_cache()) / _SUBDIR
    if all(f.is_file() for f in _files(out)):
        return out
    out.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(prefix="nsem-fetch-") as tmp:
        cmd = [sys.executable, "-m", "pip", "download", "--no-deps", "--disable-pip-version-check"]
        cmd += ["-q"] if quiet else []
        cmd += ["-d", tmp, f"stardist=={version}"]
        res = subprocess.run(cmd, capture_output=True, text=True, check=False)
        wheels = sorted(Path(tmp).glob("stardist-*.whl"))
        if res.returncode != 0 or not wheels:
            raise RuntimeError(
                f"could not download stardist=={version} from PyPI "
                f"(pip exit {res.returncode}): {res.stderr.strip()[-500:]}"
            )
        with zipfile.ZipFile(wheels[0]) as zf:
            names = set(zf.namelist())
            missing = [m for m in DSB2018_FILES if m not in names]
            if missing:
                raise RuntimeError(f"{wheels[0].name} lacks {missing}")
            for member, target in zip(DSB2018_FILES, _files(out), strict=True):
                part = target.with_name(target.name + ".part")
                with zf.open(member) as src, open(part, "wb") as dst:
                    shutil.copyfileobj(src, dst)
                os.replace(part, target)
    return out
