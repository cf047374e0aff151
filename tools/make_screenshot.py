"""Make docs/images/widget.png: napari with the Sinkhorn-EM widget docked at work.

Opens the bundled worm-head sample, docks the "Sinkhorn-EM nuclei" widget, runs the
segmentation through the widget (its worker thread, as a user would) and saves a
screenshot of the whole window with the labels and centres shown.

Needs a display; on a headless machine run it under Xvfb::

    xvfb-run -a python tools/make_screenshot.py [--output docs/images/widget.png]
"""

from __future__ import annotations

import argparse
import time
from pathlib import Path

import napari
import numpy as np
from qtpy.QtWidgets import QApplication

from napari_sinkhorn_em._napari.widget import SinkhornEMWidget

ROOT = Path(__file__).resolve().parents[1]


def _process_events(seconds: float = 0.0) -> None:
    end = time.monotonic() + seconds
    while True:
        QApplication.processEvents()
        if time.monotonic() >= end:
            break
        time.sleep(0.01)


def main(argv: list[str] | None = None) -> Path:
    """Build the scene, run the widget and write the screenshot; return its path."""
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--output", type=Path, default=ROOT / "docs" / "images" / "widget.png")
    args = parser.parse_args(argv)

    viewer = napari.Viewer(title="napari-sinkhorn-em")
    viewer.window._qt_window.resize(1500, 920)
    viewer.open_sample("napari-sinkhorn-em", "worm_head")
    widget = SinkhornEMWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Sinkhorn-EM nuclei", area="right")
    _process_events(0.2)

    widget.run()
    while widget.is_running:
        _process_events(0.05)
    labels = viewer.layers["worm_head nuclei"]
    points = viewer.layers["worm_head centres"]
    labels.opacity = 0.5
    viewer.layers.selection.active = points
    # the z-plane cutting through the most nuclei
    z = int(np.argmax([len(np.unique(plane)) for plane in np.asarray(labels.data)]))
    viewer.dims.set_current_step(0, z)
    viewer.canvas.overlays.scale_bar.visible = True
    viewer.reset_view()
    _process_events(0.5)

    args.output.parent.mkdir(parents=True, exist_ok=True)
    viewer.screenshot(path=str(args.output), canvas_only=False)
    canvas = viewer.screenshot(canvas_only=True)
    if canvas[..., :3].std() == 0:
        raise RuntimeError("the canvas rendered blank; run under Xvfb (xvfb-run -a)")
    print(f"wrote {args.output} ({widget.status.value})")
    viewer.close()
    return args.output


if __name__ == "__main__":
    main()
