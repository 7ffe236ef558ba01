"""The napari-facing side: reader, sample data and (in ``widgets``) the only napari/Qt importers."""
