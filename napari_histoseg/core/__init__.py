"""Task-neutral machinery: device, tiled prediction and blending, runs (drive, Cancelled, progress),
resizing, scores (confusion, Dice, ROC AUC, boundary F), hashing, regions and polygons, and QuPath GeoJSON
(``geojson`` writes masks and nuclei, ``geojson_import`` reads them back), which every task writes.
Imports nothing above ``io``."""
