"""Sample H&E images (npe2 sample-data contributions) and their paths.

The images are package data in ``napari_histoseg/sample_data/`` (sources and
licences in its README.md). The functions return napari layer-data tuples
without importing napari, so scripts, the CLI and tests can use them too.

>>> from napari_histoseg.plugin.samples import breast_carcinoma
>>> data, kwargs, kind = breast_carcinoma()[0]
>>> data.shape, data.dtype, kind
((1000, 1000, 3), dtype('uint8'), 'image')
"""

from __future__ import annotations

from pathlib import Path

__all__ = ["SAMPLES", "sample_path", "breast_carcinoma", "tumour_nuclei", "skin_slide"]

_DIR = Path(__file__).resolve().parent.parent / "sample_data"

#: File name of each sample -> (short key, one-line description, licence).
SAMPLES = {
    "tiatoolbox_target_image.png": (
        "breast_carcinoma",
        "1000 x 1000 RGB H&E breast carcinoma (TIAToolbox stain-normalisation target)",
        "BSD-3-Clause, (c) Tissue Image Analytics (TIA) Centre",
    ),
    "stardist_histo.jpg": (
        "tumour_nuclei",
        "500 x 300 (W x H) RGB H&E with dense tumour nuclei (StarDist example, from TCIA)",
        "BSD-3-Clause, (c) Uwe Schmidt, Martin Weigert",
    ),
    "cmu_small_region.svs": (
        "skin_slide",
        "Aperio SVS, 2220 x 2967 (W x H), tiled JPEG, H&E skin, 0.499 um/px (CMU-1 crop)",
        "CC0 1.0",
    ),
}


def sample_path(name: str = "tiatoolbox_target_image.png") -> Path:
    """Path of a bundled sample image.

    Parameters
    ----------
    name : str, optional
        A file name from :data:`SAMPLES` or its short key
        (``"breast_carcinoma"``, ``"tumour_nuclei"``, ``"skin_slide"``).
        The default is the breast carcinoma PNG used by ``histoseg demo``.

    Returns
    -------
    path : Path
        Absolute path inside the installed package.

    Raises
    ------
    KeyError
        For an unknown name.
    FileNotFoundError
        If the package was installed without its sample data.

    Examples
    --------
    >>> sample_path("skin_slide").name
    'cmu_small_region.svs'
    """
    keys = {key: fname for fname, (key, _, _) in SAMPLES.items()}
    fname = keys.get(name, name)
    if fname not in SAMPLES:
        raise KeyError(f"unknown sample {name!r}; choose from {sorted(SAMPLES) + sorted(keys)}")
    path = _DIR / fname
    if not path.is_file():
        raise FileNotFoundError(f"sample image missing from the installed package: {path}")
    return path


def _layer(fname: str, name: str) -> list[tuple]:
    from napari_histoseg.io import open_image
    from napari_histoseg.plugin.reader import slide_layer_data

    key, description, licence = SAMPLES[fname]
    slide = open_image(sample_path(fname))  # lazy slides stay open for the layer
    extra = {"sample": key, "description": description, "licence": licence}
    return [slide_layer_data(slide, name=name, metadata=extra)]


def breast_carcinoma() -> list[tuple]:
    """The default sample: 1000 x 1000 RGB uint8 H&E breast carcinoma.

    Returns
    -------
    layers : list of one (data, add_kwargs, "image") tuple
        ``data`` is a (1000, 1000, 3) uint8 array; ``add_kwargs`` has
        ``name``, ``rgb=True`` and ``metadata`` (path, mpp (unknown: None),
        source and licence).
    """
    return _layer("tiatoolbox_target_image.png", "breast carcinoma (H&E)")


def tumour_nuclei() -> list[tuple]:
    """300 x 500 (H x W) RGB uint8 H&E with dense tumour nuclei (StarDist).

    Returns
    -------
    layers : list of one (data, add_kwargs, "image") tuple
    """
    return _layer("stardist_histo.jpg", "tumour nuclei (H&E)")


def skin_slide() -> list[tuple]:
    """The Aperio SVS region (H&E skin), read lazily tile by tile.

    Returns
    -------
    layers : list of one (data, add_kwargs, "image") tuple
        ``data`` is a list of one lazy (2967, 2220, 3) uint8 level
        (``multiscale=True``); ``scale`` is (0.499, 0.499) in µm from the
        Aperio description.
    """
    return _layer("cmu_small_region.svs", "skin slide (Aperio SVS)")
