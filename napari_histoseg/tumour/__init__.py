"""Task "segmentation": tumour masks (train, evaluate, export, quantify, cli)."""
