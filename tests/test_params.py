"""SegmentationParams: the one parameter object (defaults, JSON round trip)."""

from __future__ import annotations

import inspect

import numpy as np
import pytest

from napari_sinkhorn_em import segment_nuclei
from napari_sinkhorn_em.params import SegmentationParams


def test_defaults_match_segment_nuclei_signature():
    sig = inspect.signature(segment_nuclei)
    kw = {
        k: v.default
        for k, v in sig.parameters.items()
        if v.kind is inspect.Parameter.KEYWORD_ONLY and k != "progress"
    }
    assert list(kw) == list(SegmentationParams.names())
    defaults = SegmentationParams.defaults()
    for name, value in kw.items():
        assert defaults[name] == value, name


def test_json_round_trip_and_unknown_names():
    p = SegmentationParams(voxel_size=(0.8, 0.35, 0.35), n_nuclei=12, init=((1.0, 2.0, 3.0),))
    q = SegmentationParams.from_json(p.to_json())
    assert q == p
    assert q.to_dict()["voxel_size"] == [0.8, 0.35, 0.35]
    with pytest.raises(ValueError, match=r"cfg\.json: unknown segmentation parameter\(s\) foo"):
        SegmentationParams.from_dict({"foo": 1}, where="cfg.json")
    with pytest.raises(ValueError, match="not valid JSON"):
        SegmentationParams.from_json("{", where="cfg.json")


def test_frozen_and_replace():
    p = SegmentationParams()
    with pytest.raises(AttributeError):
        p.method = "em"  # type: ignore[misc]
    assert p.replace(method="em").method == "em"
    assert p.method == "sinkhorn"
    assert SegmentationParams.help("nucleus_diameter").startswith("typical nucleus diameter")


def test_values_are_checked_and_normalised():
    p = SegmentationParams(
        voxel_size=[0.8, 0.35, 0.35],
        channel_names=["GFP", "GFP", "RFP", "GFP"],
        n_nuclei=None,
        nucleus_diameter=3,
        init=[[1, 2, 3]],
        covariance_scale=[0.5, 2],
        tol=0,
        random_state=np.int64(7),
    )
    assert p.voxel_size == (0.8, 0.35, 0.35)
    assert p.channel_names == ("GFP", "GFP_2", "RFP", "GFP_3")
    assert p.n_nuclei == "auto"
    assert p.nucleus_diameter == 3.0 and isinstance(p.nucleus_diameter, float)
    assert p.init == ((1.0, 2.0, 3.0),)
    assert p.covariance_scale == (0.5, 2.0)
    assert p.random_state == 7 and type(p.random_state) is int
    assert p.to_dict()["init"] == [[1.0, 2.0, 3.0]]
    # the same object whether built from tuples, lists or a JSON file
    assert SegmentationParams.from_json(p.to_json()) == p
    with pytest.raises(ValueError, match=r"cfg\.json: max_components_per_tile must be >= 1"):
        SegmentationParams.from_dict({"max_components_per_tile": 0}, where="cfg.json")


def test_cli_flags_take_help_and_choices_from_the_params():
    """The CLI flags for segmentation parameters cannot drift from SegmentationParams."""
    from napari_sinkhorn_em.cli import build_parser

    parser = build_parser()
    sub = next(a for a in parser._actions if a.dest == "command").choices["segment"]
    flags = {a.dest: a for a in sub._actions}
    for dest, name in [
        ("n_nuclei", "n_nuclei"),
        ("method", "method"),
        ("nucleus_diameter", "nucleus_diameter"),
        ("channel_axis", "channel_axis"),
    ]:
        assert SegmentationParams.help(name) in flags[dest].help, name
    defaults = SegmentationParams.defaults()
    assert f"(default: {defaults['method']})" in flags["method"].help
    assert f"(default: {defaults['nucleus_diameter']})" in flags["nucleus_diameter"].help
    assert tuple(flags["method"].choices) == SegmentationParams.choices("method")
