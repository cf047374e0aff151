"""Hostile parameters (issue 16): every mistake gets an error naming the parameter and the
reason, or a warning; none reaches NumPy, Numba or a division by zero, none hangs."""

from __future__ import annotations

import json
import warnings

import numpy as np
import pytest

from napari_sinkhorn_em import (
    SegmentationParams,
    SegmentationWarning,
    load_params,
    save_params,
    segment_nuclei,
)
from napari_sinkhorn_em.pipeline.preprocess import preprocess, validate_image


@pytest.fixture(scope="module")
def small(worms):
    """8 nuclei, 2-D, 2 channels (channel axis 0), 80 x 126 px of 0.35 um."""
    return worms(n_nuclei=8, ndim=2, n_channels=2, region="body", seed=5)


def run(w, **kw):
    kw.setdefault("nucleus_diameter", 2.7)
    kw.setdefault("random_state", 0)
    kw.setdefault("voxel_size", w.voxel_size)
    kw.setdefault("channel_axis", 0)
    return segment_nuclei(w.image, **kw)


@pytest.mark.parametrize(
    ("kwargs", "match"),
    [
        # voxel size: units, signs, types
        ({"voxel_size": (0.35e-6, 0.35e-6)}, r"looks like metres: in micrometres that is 0\.35"),
        ({"voxel_size": (350, 350)}, r"looks like nanometres: in micrometres that is 0\.35"),
        (
            {"voxel_size": (0.00035, 0.00035)},
            r"looks like millimetres: in micrometres that is 0\.35",
        ),
        ({"voxel_size": (1e5, 1.0)}, r"voxel_size .* is outside 1 nm \.\. 100 um per voxel"),
        ({"voxel_size": (0.0, 0.35)}, r"voxel_size values must be positive and finite"),
        ({"voxel_size": (np.nan, 0.35)}, r"voxel_size values must be positive and finite"),
        ({"voxel_size": ("0.35", 0.35)}, r"voxel_size must be a sequence of numbers"),
        ({"voxel_size": 0.35}, r"voxel_size must be a sequence of numbers"),
        ({"voxel_size": (0.35,)}, r"voxel_size must have 2 \(Y X\) or 3 \(Z Y X\) values"),
        ({"voxel_size": (0.8, 0.35, 0.35)}, r"voxel_size must have 2 entries"),
        # nucleus diameter: type, finiteness, sign, against the image
        (
            {"nucleus_diameter": "3"},
            r"nucleus_diameter must be a number \(um\), got '3' \(a string\)",
        ),
        ({"nucleus_diameter": np.nan}, r"nucleus_diameter must be a finite number \(um\), got nan"),
        ({"nucleus_diameter": np.inf}, r"nucleus_diameter must be a finite number"),
        ({"nucleus_diameter": -2.0}, r"nucleus_diameter \(um\) must be > 0, got -2"),
        ({"nucleus_diameter": 0}, r"nucleus_diameter \(um\) must be > 0, got 0"),
        (
            {"nucleus_diameter": 1e6},
            r"nucleus_diameter=1e\+06 um is larger than the whole image \(28 x 44\.1 um\)",
        ),
        # counts and seeds
        ({"max_components_per_tile": 0}, r"max_components_per_tile must be >= 1, got 0"),
        (
            {"max_components_per_tile": 2.5},
            r"max_components_per_tile must be an integer, got 2\.5 \(float\)",
        ),
        ({"random_state": -1}, r"random_state must be >= 0, got -1"),
        ({"random_state": 2**32}, r"random_state must be <= 4294967295, got 4294967296"),
        ({"random_state": 1.5}, r"random_state must be an integer, got 1\.5 \(float\)"),
        ({"random_state": "7"}, r"random_state must be an integer, got '7' \(a string\)"),
        ({"n_nuclei": "12"}, r"n_nuclei must be a positive integer, 'auto' or None, got '12'"),
        ({"n_nuclei": 0}, r"n_nuclei must be >= 1, got 0"),
        ({"n_nuclei": 12.0}, r"n_nuclei must be an integer, got 12\.0 \(float\)"),
        ({"n_init": True}, r"n_init must be an integer, got True \(bool\)"),
        ({"max_iter": -1}, r"max_iter must be >= 0, got -1"),
        ({"n_neighbors": 0}, r"n_neighbors must be >= 1, got 0"),
        ({"weight_refits": -2}, r"weight_refits must be >= 0, got -2"),
        ({"weight_refits": "always"}, r"weight_refits must be one of 'auto'; got 'always'"),
        # real-valued parameters: NaN, inf, negative, strings
        ({"mahalanobis_radius": np.nan}, r"mahalanobis_radius must be a finite number, got nan"),
        ({"mahalanobis_radius": 0.0}, r"mahalanobis_radius must be > 0, got 0"),
        ({"min_size": -0.1}, r"min_size must be >= 0, got -0\.1"),
        ({"tol": np.nan}, r"tol must be a finite number, got nan"),
        ({"tol": -1e-3}, r"tol must be >= 0, got -0\.001"),
        ({"intensity_weight": np.inf}, r"intensity_weight must be a finite number, got inf"),
        ({"foreground_threshold": -0.5}, r"foreground_threshold must be >= 0, got -0\.5"),
        ({"background_scale": np.nan}, r"background_scale must be a finite number \(um\), got nan"),
        ({"marginal_penalty": np.inf}, r"marginal_penalty must be a positive number or None"),
        ({"marginal_penalty": np.nan}, r"marginal_penalty must be a positive number or None"),
        ({"covariance_scale": (4.0, 0.25)}, r"covariance_scale must satisfy 0 < lo <= hi"),
        ({"covariance_scale": (0.25,)}, r"covariance_scale must be two numbers \(lo, hi\)"),
        ({"covariance_scale": (0.25, np.nan)}, r"covariance_scale must be a finite number"),
        # channels, choices, flags
        ({"channel_axis": 0.0}, r"channel_axis must be an integer, got 0\.0 \(float\)"),
        ({"channel_axis": 3}, r"channel_axis 3 is out of range for an image with 3 axes"),
        ({"channel_names": "GFP"}, r"channel_names must be a sequence of names, got 'GFP'"),
        (
            {"channel_names": ["a", "b", "c"]},
            r"channel_names has 3 names but the image has 2 channels",
        ),
        ({"method": "EM"}, r"method must be one of 'sinkhorn', 'em', 'em-learned'; got 'EM'"),
        ({"init": "grid"}, r"init must be one of 'peaks', 'k-means\+\+', 'random'; got 'grid'"),
        ({"init": [[1.0, np.nan]]}, r"init array contains NaN or infinite centres"),
        ({"init": [1.0, 2.0]}, r"init array must have shape \(K, 2\)"),
        ({"suppress_granules": "yes"}, r"suppress_granules must be True or False, got 'yes'"),
        (
            {"threshold_method": "li"},
            r"threshold_method must be one of 'otsu', 'triangle', 'noise'",
        ),
    ],
)
def test_bad_parameter_gets_a_named_reason(small, kwargs, match):
    with pytest.raises(ValueError, match=match):
        run(small, **kwargs)


def test_metres_hint_for_3d_stack_and_params_object():
    with pytest.raises(ValueError, match=r"looks like metres: in micrometres that is 0\.8"):
        SegmentationParams(voxel_size=(0.8e-6, 0.35e-6, 0.35e-6))
    # the same check in preprocess (public stage) and validate_image
    img = np.random.default_rng(0).random((4, 20, 20))
    with pytest.raises(ValueError, match=r"looks like metres"):
        validate_image(img, voxel_size=(0.8e-6, 0.35e-6, 0.35e-6))
    with pytest.raises(ValueError, match=r"larger than the whole image"):
        preprocess(img, voxel_size=(0.8, 0.35, 0.35), nucleus_diameter=50.0)


@pytest.mark.parametrize(
    ("shape", "axis", "match"),
    [
        ((6, 3, 40, 40), -1, r"channel_axis=3 would give 40 channels .*try channel_axis=1"),
        ((20, 4, 30, 30), 0, r"channel_axis=0 would give 20 channels .*try channel_axis=1"),
        ((40, 50, 60), 0, r"would give 40 channels .*single-channel image use channel_axis=None"),
    ],
)
def test_implausible_channel_axis_is_refused_with_a_suggestion(shape, axis, match):
    img = np.random.default_rng(0).random(shape).astype(np.float32)
    with pytest.raises(ValueError, match=match):
        segment_nuclei(img, channel_axis=axis, voxel_size=(1.0,) * (len(shape) - 1))
    # a plausible one passes the check
    data, _, ca = validate_image(np.random.default_rng(0).random((6, 4, 30, 30)), channel_axis=1)
    assert ca == 1 and data.shape == (6, 30, 30, 4)


def test_config_file_errors_name_the_file_and_parameter(tmp_path):
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"parameters": {"max_components_per_tile": 0}}))
    with pytest.raises(ValueError, match=r"cfg\.json: max_components_per_tile must be >= 1"):
        load_params(cfg)
    cfg.write_text('{"parameters": {"tol": "NaN"}}')
    with pytest.raises(
        ValueError, match=r"cfg\.json: tol must be a number, got 'NaN' \(a string\)"
    ):
        load_params(cfg)
    cfg.write_text('{"parameters": {"mahalanobis_radius": NaN}}')  # Python's JSON reads NaN
    with pytest.raises(ValueError, match=r"cfg\.json: mahalanobis_radius must be a finite number"):
        load_params(cfg)
    cfg.write_text('{"nucleus_diameter": "3"}')
    with pytest.raises(ValueError, match=r"cfg\.json: nucleus_diameter must be a number \(um\)"):
        load_params(cfg)
    with pytest.raises(ValueError, match=r"out\.json: random_state must be >= 0"):
        save_params(tmp_path / "out.json", {"random_state": -1})
    assert not (tmp_path / "out.json").exists()


def test_cli_config_with_zero_tile_size_exits_2_before_touching_files(tmp_path, capsys, small):
    from napari_sinkhorn_em.cli import main
    from napari_sinkhorn_em.io import write_image

    write_image(tmp_path / "a.tif", small.image, voxel_size=small.voxel_size, axes="CYX")
    cfg = tmp_path / "cfg.json"
    cfg.write_text(json.dumps({"max_components_per_tile": 0}))
    out = tmp_path / "out"
    assert main(["segment", str(tmp_path / "a.tif"), "-o", str(out), "--config", str(cfg)]) == 2
    err = capsys.readouterr().err
    assert "max_components_per_tile must be >= 1, got 0" in err and "cfg.json" in err
    assert not out.exists()
    code = main(["segment", str(tmp_path / "a.tif"), "-o", str(out), "-q",
                 "--voxel-size", "0.35e-6", "0.35e-6"])  # fmt: skip
    assert code == 2
    assert "looks like metres: in micrometres that is 0.35" in capsys.readouterr().err
    assert not out.exists()


def test_duplicate_channel_names_are_made_unique(small):
    r = run(small, channel_names=["GFP", "GFP"], n_nuclei=8)
    assert [c for c in r.table.columns if c.startswith("mean_")] == ["mean_GFP", "mean_GFP_2"]
    assert r.params["channel_names"] == ["GFP", "GFP_2"]
    # each column is its own channel's mean raw intensity
    lab = r.labels
    for c, col in enumerate(["mean_GFP", "mean_GFP_2"]):
        first = small.image[c][lab == 1].mean()
        assert r.table[col][0] == pytest.approx(first)
    assert r.table["mean_GFP"][0] != r.table["mean_GFP_2"][0]


def test_zero_and_too_few_nuclei_warn_and_are_flagged(small):
    with pytest.warns(SegmentationWarning, match=r"no nuclei found \(9 detected\)"):
        r = run(small, mahalanobis_radius=0.01)
    assert len(r.table) == 0 and r.info["low_count"] is True
    assert r.info["warnings"][0].startswith("no nuclei found")
    with pytest.warns(SegmentationWarning, match=r"only (2[0-9]) nuclei found for 60 requested"):
        r = run(small, n_nuclei=60)
    assert r.info["low_count"] is True
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # a good result: no warning
        r = run(small)
    assert r.info["low_count"] is False and r.info["warnings"] == []
    assert issubclass(SegmentationWarning, UserWarning)
