"""Task-neutral machinery: device, tiled prediction and blending, runs (drive, Cancelled, progress),
resizing, scores (confusion, Dice, ROC AUC, boundary F), hashing. Imports nothing above ``io``."""
