"""The napari plugin: widget, reader, writers and sample data (the only Qt code).

Entry points are listed in ``napari.yaml``; nothing outside this subpackage imports it.
"""
