"""SegmentationParams: the one parameter object (defaults, JSON round trip)."""

from __future__ import annotations

import inspect

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
