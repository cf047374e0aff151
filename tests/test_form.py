"""The widget's parameter form, generated from SegmentationParams (real magicgui/Qt widgets)."""

from __future__ import annotations

import dataclasses

import pytest

pytest.importorskip("napari")

from magicgui.widgets import CheckBox, FloatSpinBox, LineEdit, SpinBox

from napari_sinkhorn_em._napari.form import (
    INPUT_FIELDS,
    MAIN_FIELDS,
    FieldLook,
    ParameterForm,
    _accepts,
    _Control,
)
from napari_sinkhorn_em.params import SegmentationParams


@pytest.fixture
def form(qtbot):
    form = ParameterForm()
    yield form
    form.main.native.close()
    form.advanced.native.close()


def test_every_default_equals_the_params_default(form):
    defaults = SegmentationParams.defaults()
    values = form.values()
    # every field except the input description has a control ...
    assert set(values) == set(defaults) - set(INPUT_FIELDS)
    # ... whose starting value is exactly the API default (nothing can drift)
    for name, value in values.items():
        assert value == defaults[name], name
        assert type(value) is type(defaults[name]), name
    assert form.params(voxel_size=None) == SegmentationParams()


def test_layout_tooltips_and_sections(form):
    main = [w.label for w in form.main]
    assert main == [form[n].look.label for n in MAIN_FIELDS]
    advanced = {w.label for w in form.advanced} | {
        w.text for w in form.advanced if isinstance(w, CheckBox)
    }
    for name in set(form.controls) - set(MAIN_FIELDS):
        look = form[name].look
        assert look.label in advanced, name
    # the tooltip is the field's help text
    for name, control in form.controls.items():
        assert control.widget.tooltip.startswith(SegmentationParams.help(name)), name


def test_auto_or_number_fields(form):
    n = form["n_nuclei"]
    assert isinstance(n.box, SpinBox) and n.auto.value and not n.box.enabled
    assert form.value("n_nuclei") == SegmentationParams.defaults()["n_nuclei"]
    n.auto.value = False  # the user unticks auto: the number box counts
    assert n.box.enabled and form.value("n_nuclei") == n.box.value
    n.box.value = 42
    assert form.value("n_nuclei") == 42
    form.set_value("n_nuclei", "auto")
    assert n.auto.value and not n.box.enabled

    # a field whose default is a number gets an 'auto' box only where the parameters
    # accept the automatic value: marginal_penalty None = exact marginals
    m = form["marginal_penalty"]
    assert isinstance(m.box, FloatSpinBox) and m.auto.text == "exact" and not m.auto.value
    assert form.value("marginal_penalty") == 1000.0
    m.auto.value = True
    assert form.value("marginal_penalty") is None and not m.box.enabled
    form.set_value("marginal_penalty", 500.0)
    assert form.value("marginal_penalty") == 500.0 and m.box.enabled

    d = form["nucleus_diameter"]
    assert isinstance(d.box, FloatSpinBox)
    assert (d.auto is not None) == _accepts("nucleus_diameter", "auto")
    form.set_value("nucleus_diameter", 4.5)
    assert form.value("nucleus_diameter") == 4.5
    if d.auto is not None:
        assert not d.auto.value
        d.auto.value = True
        assert form.value("nucleus_diameter") == "auto"
        d.show_estimate(2.71)  # an estimate is shown without leaving 'auto'
        assert d.auto.value and d.box.value == pytest.approx(2.71)

    # random_state: ticked 'random' = None (a seed is drawn); a number unticks it
    form.set_value("random_state", 5)
    assert form.value("random_state") == 5 and not form["random_state"].auto.value
    # foreground_threshold: None = automatic threshold
    form.set_value("foreground_threshold", 0.125)
    assert form.value("foreground_threshold") == 0.125
    form.set_value("foreground_threshold", None)
    assert form.value("foreground_threshold") is None


def test_text_fields_are_exact_and_errors_name_the_parameter(form):
    assert isinstance(form["tol"].box, LineEdit)
    form["tol"].box.value = "2.5e-7"
    assert form.value("tol") == 2.5e-7  # a spin box would round this to 0
    form["tol"].box.value = "abc"
    with pytest.raises(ValueError, match=r"tolerance \(tol\) 'abc' is not a number"):
        form.values()
    form["tol"].box.value = "1e-5"
    form["covariance_scale"].box.value = "0.5, 2"
    assert form.value("covariance_scale") == (0.5, 2.0)
    form["covariance_scale"].box.value = "0.5"
    with pytest.raises(ValueError, match=r"covariance_scale\) needs 2 numbers"):
        form.values()


def test_set_params_round_trip_and_reset(form):
    changed = SegmentationParams().replace(
        n_nuclei=80,
        nucleus_diameter=4.0,
        method="em",
        random_state=3,
        init="k-means++",
        n_init=4,
        max_iter=250,
        tol=3e-6,
        foreground_threshold=0.3,
        weights="uniform",
        weight_refits=2,
        marginal_penalty=None,
        covariance_scale=(0.5, 3.0),
        suppress_granules=False,
        max_components_per_tile=150,
    )
    form.set_params(changed)
    assert form.params() == changed
    # a dict from a parameter file (JSON lists) works too
    form.reset()
    assert form.params() == SegmentationParams()
    form.set_params(changed.to_dict())
    assert form.params() == changed


def test_a_field_without_a_look_still_gets_a_control(qtbot):
    """A field added to SegmentationParams later appears with a control from its type."""
    for default, kind, typed, expected in [
        (7, SpinBox, 9, 9),
        (0.5, FloatSpinBox, 0.25, 0.25),
        (True, CheckBox, False, False),
        ("otsu", LineEdit, "noise", "noise"),
        (None, LineEdit, "1.5", 1.5),
        ("auto", LineEdit, "12", 12),
        ((1.0, 2.0), LineEdit, "3, 4", (3.0, 4.0)),
    ]:
        control = _Control("new_field", default, FieldLook("new field"), "help")
        assert isinstance(control.box, kind)
        assert control.get() == default
        control.box.value = typed
        assert control.get() == expected
        control.widget.native.close()
    names = [f.name for f in dataclasses.fields(SegmentationParams)]
    assert set(MAIN_FIELDS) <= set(names)
