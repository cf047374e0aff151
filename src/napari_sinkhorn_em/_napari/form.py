"""The parameter form of the widget, generated from :class:`SegmentationParams`.

Every field of :class:`~napari_sinkhorn_em.params.SegmentationParams` except the input
description (voxel size, channel axis and names, which the widget takes from the layers)
gets a control whose starting value is the field's default and whose tooltip is the
field's ``help`` text, so the widget cannot drift from the API. :data:`LOOKS` only adds
presentation (label, range, choices); a field without an entry still appears (in the
advanced section) with a control chosen from its default's type.

Fields that take ``"auto"`` (or None for "automatic") or a number, such as ``n_nuclei``
and ``nucleus_diameter``, get a number box plus a checkbox: ticked gives the automatic
value, unticked the number.
"""

from __future__ import annotations

import ast
import dataclasses
import math
from dataclasses import dataclass
from typing import Any

from magicgui.widgets import CheckBox, ComboBox, Container, FloatSpinBox, LineEdit, SpinBox

from napari_sinkhorn_em.params import SegmentationParams

__all__ = ["INPUT_FIELDS", "LOOKS", "MAIN_FIELDS", "FieldLook", "ParameterForm"]

#: fields the widget fills from the chosen layers, not from the form
INPUT_FIELDS = ("voxel_size", "channel_axis", "channel_names")
#: fields shown above the fold; all other fields go into the advanced section
MAIN_FIELDS = ("n_nuclei", "nucleus_diameter", "method", "random_state")
_AUTO = (None, "auto")


@dataclass(frozen=True)
class FieldLook:
    """How one parameter is shown (never its default: that comes from the params).

    Attributes
    ----------
    label : str
        Label in the form.
    choices : tuple of (text, value), optional
        A drop-down of these values.
    integer : bool
        Integer number box (else floating point).
    minimum, maximum, step : float
        Range and step of the number box.
    decimals : int
        Decimals of a floating-point box.
    auto : str, optional
        Adds a checkbox with this text; ticked means the automatic value (None or
        ``"auto"``: the field's default when that is automatic, else ``auto_value``).
        Dropped when SegmentationParams refuses ``auto_value`` for the field.
    auto_value : object
        The automatic value when the default is a number.
    placeholder : float
        Number shown in the box while the automatic value is the default.
    text : bool
        A text box parsed as a number (exact; for values like 1e-5) or a tuple.
    tip : str
        Extra tooltip text after the field's help.
    """

    label: str
    choices: tuple[tuple[str, Any], ...] = ()
    integer: bool = False
    minimum: float = 0.0
    maximum: float = 1e6
    step: float = 1.0
    decimals: int = 2
    auto: str | None = None
    auto_value: Any = None
    placeholder: float = 0.0
    text: bool = False
    tip: str = ""


LOOKS: dict[str, FieldLook] = {
    "n_nuclei": FieldLook(
        "number of nuclei",
        integer=True,
        minimum=1,
        maximum=1_000_000,
        auto="auto",
        auto_value="auto",
        placeholder=100,
        tip="Ticked 'auto': estimated from the image (shown after a run).",
    ),
    "nucleus_diameter": FieldLook(
        "nucleus diameter (µm)",
        minimum=0.1,
        maximum=1000.0,
        step=0.1,
        auto="auto",
        auto_value="auto",
        placeholder=3.0,
        tip="Sets the peak detection scale and the bounds of the nucleus shapes.",
    ),
    "method": FieldLook(
        "method",
        choices=(
            ("Sinkhorn-EM", "sinkhorn"),
            ("EM (fixed weights)", "em"),
            ("EM (learned weights)", "em-learned"),
        ),
    ),
    "random_state": FieldLook(
        "random seed",
        integer=True,
        maximum=2**31 - 1,
        auto="random",
        auto_value=None,
        tip="Ticked 'random': a seed is drawn and recorded in the exported parameters.",
    ),
    "init": FieldLook(
        "initialisation",
        choices=(
            ("detected peaks", "peaks"),
            ("k-means++", "k-means++"),
            ("random voxels", "random"),
        ),
    ),
    "n_init": FieldLook("restarts (n_init)", integer=True, minimum=1, maximum=100),
    "max_iter": FieldLook("max iterations", integer=True, minimum=1, maximum=100_000),
    "tol": FieldLook("tolerance", text=True),
    "intensity_weight": FieldLook("intensity weight", maximum=1000.0, step=0.1),
    "n_neighbors": FieldLook("neighbours", integer=True, minimum=1, maximum=1024),
    "foreground_threshold": FieldLook(
        "foreground threshold",
        maximum=1.0,
        step=0.01,
        decimals=3,
        auto="auto",
        placeholder=0.2,
        tip="Normalised intensity units (0-1).",
    ),
    "weights": FieldLook(
        "mixing weights",
        choices=(("nuclei", "nuclei"), ("voronoi", "voronoi"), ("uniform", "uniform")),
    ),
    "weight_refits": FieldLook(
        "weight re-estimations", integer=True, maximum=1000, auto="auto", auto_value="auto"
    ),
    "marginal_penalty": FieldLook(
        "marginal penalty",
        maximum=1e7,
        step=100.0,
        auto="exact",
        auto_value=None,
        placeholder=1000.0,
    ),
    "voxel_mass": FieldLook(
        "voxel mass", choices=(("uniform", "uniform"), ("intensity", "intensity"))
    ),
    "covariance_scale": FieldLook("covariance bounds", text=True),
    "mahalanobis_radius": FieldLook("Mahalanobis radius", minimum=0.01, maximum=1000.0, step=0.1),
    "min_size": FieldLook("minimum size", maximum=1000.0, step=0.05),
    "background_scale": FieldLook(
        "background scale (µm)",
        maximum=1e4,
        step=1.0,
        auto="auto",
        placeholder=15.0,
        tip="0 = no background subtraction.",
    ),
    "threshold_method": FieldLook(
        "threshold method", choices=(("otsu", "otsu"), ("triangle", "triangle"), ("noise", "noise"))
    ),
    "suppress_granules": FieldLook("suppress granules"),
    "local_contrast": FieldLook(
        "adaptive (local scale and contrast)",
        tip="Off = the fixed-scale pipeline: one LoG scale and one global threshold.",
    ),
    "max_components_per_tile": FieldLook(
        "nuclei per tile", integer=True, minimum=1, maximum=1_000_000
    ),
}


def _accepts(name: str, value: Any) -> bool:
    """Whether SegmentationParams takes ``value`` for ``name``."""
    try:
        SegmentationParams(**{name: value})
    except (TypeError, ValueError):
        return False
    return True


def _look(f: dataclasses.Field) -> FieldLook:
    """The look of a field: :data:`LOOKS`, with the allowed values of the field's
    ``choices`` metadata when it has them (display texts from LOOKS where given)."""
    look = LOOKS.get(f.name) or FieldLook(f.name.replace("_", " "))
    if look.auto is not None and f.default not in _AUTO and not _accepts(f.name, look.auto_value):
        # no 'auto' checkbox for a value the parameters refuse (it would only fail the run)
        look = dataclasses.replace(look, auto=None)
    allowed = f.metadata.get("choices")
    if allowed:
        texts = {v: t for t, v in look.choices}
        look = dataclasses.replace(look, choices=tuple((texts.get(v, v), v) for v in allowed))
    return look


def _format(value: Any) -> str:
    """Text of a value in a text box (inverse of :func:`_parse`)."""
    if value is None:
        return "auto"
    if isinstance(value, tuple | list):
        return ", ".join(_format(v) for v in value)
    if isinstance(value, float):
        return repr(value)
    return str(value)


def _parse(name: str, label: str, text: str, like: Any) -> Any:
    """Parse a text box like its default ``like`` (number, tuple, None, string)."""
    raw = text.strip()
    if raw.lower() in ("", "auto", "none") and (like is None or like == "auto"):
        return like
    if isinstance(like, tuple):
        parts = [p for p in raw.replace(";", ",").replace(" ", ",").split(",") if p]
        values = tuple(_parse(name, label, p, like[0] if like else 0.0) for p in parts)
        if like and len(values) != len(like):
            raise ValueError(
                f"{label} ({name}) needs {len(like)} numbers separated by commas, got {text!r}"
            )
        return values
    if isinstance(like, str) and like != "auto":
        return raw
    try:
        value = ast.literal_eval(raw)
    except (ValueError, SyntaxError):
        value = raw
    if isinstance(value, bool) or not isinstance(value, int | float):
        raise ValueError(f"{label} ({name}) {text!r} is not a number")
    if isinstance(like, float) or like is None:
        value = float(value)
        if not math.isfinite(value):
            raise ValueError(f"{label} ({name}) must be a finite number, got {text!r}")
    return value


class _Control:
    """One parameter's control: ``widget`` goes into the form; ``get`` / ``set`` values."""

    def __init__(self, name: str, default: Any, look: FieldLook, tooltip: str) -> None:
        self.name = name
        self.default = default
        self.look = look
        self.auto: CheckBox | None = None
        self.box: Any
        automatic = default in _AUTO if not isinstance(default, tuple | list) else False
        if look.auto is not None:
            self.auto_value = default if automatic else look.auto_value
            start = look.placeholder if automatic else default
            self.box = self._number(look, start, tooltip)
            self.auto = CheckBox(text=look.auto, value=automatic, tooltip=tooltip)
            self.box.enabled = not automatic
            self.auto.changed.connect(lambda on: setattr(self.box, "enabled", not on))
            self.widget: Any = Container(
                widgets=[self.box, self.auto], layout="horizontal", labels=False, label=look.label
            )
            self.widget.tooltip = tooltip
        elif look.choices:
            values = [v for _, v in look.choices]
            choices = list(look.choices)
            if default not in values:  # a new choice in params: still offered
                choices.append((str(default), default))
            self.box = ComboBox(label=look.label, choices=choices, value=default, tooltip=tooltip)
            self.widget = self.box
        elif isinstance(default, bool):
            self.box = CheckBox(text=look.label, value=default, tooltip=tooltip)
            self.widget = self.box
        elif isinstance(default, int | float) and not look.text:
            self.box = self._number(look, default, tooltip)
            self.widget = self.box
        else:  # text: exact numbers (tol), tuples, strings, anything new
            self.box = LineEdit(label=look.label, value=_format(default), tooltip=tooltip)
            self.widget = self.box

    @staticmethod
    def _number(look: FieldLook, value: Any, tooltip: str) -> Any:
        integer = look.integer or (isinstance(value, int) and not isinstance(value, bool))
        if integer:
            return SpinBox(
                label=look.label,
                min=int(look.minimum),
                max=int(min(look.maximum, 2**31 - 1)),
                step=max(1, int(look.step)),
                value=int(value),
                tooltip=tooltip,
            )
        box = FloatSpinBox(
            label=look.label,
            min=look.minimum,
            max=look.maximum,
            step=look.step,
            tooltip=tooltip,
        )
        box.native.setDecimals(look.decimals)
        box.value = float(value)
        return box

    @property
    def is_auto(self) -> bool:
        return self.auto is not None and bool(self.auto.value)

    def get(self) -> Any:
        """The parameter value; ValueError naming the parameter for unparsable text."""
        if self.is_auto:
            return self.auto_value
        if isinstance(self.box, LineEdit):
            return _parse(self.name, self.look.label, self.box.value, self.default)
        if isinstance(self.box, SpinBox):
            return int(self.box.value)
        if isinstance(self.box, FloatSpinBox):
            return float(self.box.value)
        return self.box.value

    def set(self, value: Any) -> None:
        """Show ``value`` (the automatic value ticks the checkbox)."""
        if isinstance(value, list):
            value = tuple(value)
        if self.auto is not None:
            automatic = value in _AUTO
            self.auto.value = automatic
            if not automatic:
                self.box.value = value
        elif isinstance(self.box, LineEdit):
            self.box.value = _format(value)
        elif value not in _AUTO:  # no automatic value here: the box keeps its number
            self.box.value = value

    def show_estimate(self, value: float) -> None:
        """Put an estimated number in the (greyed) box, keeping 'auto' ticked."""
        if self.auto is not None:
            self.box.value = round(value) if isinstance(self.box, SpinBox) else float(value)


class ParameterForm:
    """magicgui controls for the segmentation parameters, built from SegmentationParams.

    Attributes
    ----------
    main, advanced : magicgui.widgets.Container
        The controls of :data:`MAIN_FIELDS` and of all other fields.
    controls : dict of str to control
        One per parameter, in field order.
    """

    def __init__(self, params: SegmentationParams | None = None) -> None:
        # the dataclass defaults themselves (an instance may normalise them, e.g. None to
        # "auto"), or the values of the given params
        if params is None:
            values = SegmentationParams.defaults()
        else:
            values = {n: getattr(params, n) for n in SegmentationParams.names()}
        self.controls: dict[str, _Control] = {}
        for f in dataclasses.fields(SegmentationParams):
            if f.name in INPUT_FIELDS:
                continue
            look = _look(f)
            tooltip = SegmentationParams.help(f.name)
            if look.tip:
                tooltip += ". " + look.tip
            self.controls[f.name] = _Control(f.name, values[f.name], look, tooltip)
        self.main = Container(
            widgets=[self.controls[n].widget for n in MAIN_FIELDS if n in self.controls]
        )
        self.advanced = Container(
            widgets=[c.widget for n, c in self.controls.items() if n not in MAIN_FIELDS]
        )

    def __getitem__(self, name: str) -> _Control:
        return self.controls[name]

    def value(self, name: str) -> Any:
        """Current value of one parameter."""
        return self.controls[name].get()

    def set_value(self, name: str, value: Any) -> None:
        """Show a value: a number unticks an 'auto' checkbox, None / 'auto' ticks it."""
        self.controls[name].set(value)

    def values(self) -> dict[str, Any]:
        """Keyword arguments of :func:`segment_nuclei` from the controls.

        Raises
        ------
        ValueError
            Naming the parameter, when a text box does not parse.
        """
        return {name: control.get() for name, control in self.controls.items()}

    def params(self, **inputs: Any) -> SegmentationParams:
        """The form as a :class:`SegmentationParams` (``inputs``: voxel size, channels)."""
        return SegmentationParams(**self.values(), **inputs)

    def set_params(self, params: SegmentationParams | dict[str, Any]) -> None:
        """Show the values of ``params`` (fields the form does not have are ignored)."""
        if isinstance(params, SegmentationParams):
            params = {n: getattr(params, n) for n in params.names()}
        for name, value in params.items():
            if name in self.controls and not (name == "init" and not isinstance(value, str)):
                self.controls[name].set(value)

    def reset(self) -> None:
        """Back to the defaults of SegmentationParams."""
        self.set_params(SegmentationParams())
