"""Interactive label-propagation refinement of a tumour mask (no napari, no Qt).

Zhou et al.'s local and global consistency, as ``DESIGN.md`` describes it: affinities on
colour (CIELAB, see :mod:`.graph` for why) and position, ``S = D^-1/2 W D^-1/2`` and
``F* = (1 - alpha)(I - alpha S)^-1 Y`` with ``Y`` the weighted prior and the clamped
seeds. Two uses:

(a) post-processing of the model's probability without seeds (``alpha`` 0.9 on the pixel
    graph): :func:`postprocess` or :meth:`RefineSession.postprocess`;
(b) interactive refinement from seeds, with or without a prior: :func:`refine` once, or a
    :class:`RefineSession` that precomputes the graphs and answers each click warm.

Seeds: 0 = no seed, 1 = tumour, 2 = not tumour. Labels: uint8, 1 tumour, 0 not.

``method="confined"`` (the default) bounds what a seed changes: a geodesic reach along
colour, and the model's confidence resisting more the farther from the seeds; a stroke
(new seeds wider than a click) means "these pixels and what is clearly like them": it
changes pixels within ``stroke_px`` of it, or farther only inside a region its
propagation fills at nearly full strength (:mod:`.reach`); ``method="region"`` adds that a
click inside a region the model got wrong overrides the model around it
(:mod:`.zones`); ``method="lgc"`` is the plain propagation. ``hold=1`` keeps confident
ground far from every seed of the other class as the model has it. Parameters and their
ranges: :mod:`.params`.

>>> from napari_histoseg.refinement import RefineSession, refine     # doctest: +SKIP
>>> labels = refine(rgb, seeds, prior=prob)                      # doctest: +SKIP
>>> session = RefineSession(rgb, prior=prob)                     # doctest: +SKIP
>>> labels = session.update(seeds, view=(0, 0, 1024, 1024))      # doctest: +SKIP
"""

from __future__ import annotations

import numpy as np

from napari_histoseg.refinement.seeds import NO_SEED, NOT_TUMOUR, TUMOUR, SeedError
from napari_histoseg.refinement.session import DEFAULTS, RefineSession

__all__ = ["refine", "postprocess", "RefineSession", "SeedError", "DEFAULTS",
           "NO_SEED", "TUMOUR", "NOT_TUMOUR"]


def refine(image, seeds, prior=None, **params) -> np.ndarray:
    """Refine a tumour segmentation from seeds (and the model's probability).

    Parameters
    ----------
    image : (H, W, 3) uint8
        RGB H&E image.
    seeds : (H, W) int
        0 no seed, 1 tumour, 2 not tumour.
    prior : (H, W) float32, optional
        The model's tumour probability in [0, 1].
    **params
        See :class:`RefineSession` (``method``, ``prior_weight``, ``sigma_colour``,
        ``colour_sensitivity``, ``alpha``, ``confidence_weight``, ``reach``, ...).

    Returns
    -------
    labels : (H, W) uint8
        1 tumour, 0 not tumour; every seeded pixel keeps its seed's class.

    Raises
    ------
    SeedError
        Seeds of the wrong shape, with values other than 0, 1, 2, or none at all.

    Examples
    --------
    >>> import numpy as np
    >>> img = np.full((64, 64, 3), 230, np.uint8); img[:, 32:] = (120, 40, 140)
    >>> seeds = np.zeros((64, 64), np.uint8); seeds[30:33, 45:48] = 1
    >>> labels = refine(img, seeds)
    >>> int(labels[:, 32:].min()), int(labels[:, :30].max())
    (1, 0)
    """
    from napari_histoseg.refinement.seeds import check_image, check_seeds

    image = check_image(image)
    check_seeds(seeds, image.shape[:2])
    return RefineSession(image, prior, **params).update(seeds)


def postprocess(image, prior, alpha: float = 0.9, **params) -> np.ndarray:
    """The paper's label-propagation post-processing of a probability map (no seeds).

    Returns uint8 (H, W) labels, 1 tumour; see :meth:`RefineSession.postprocess`.
    """
    return RefineSession(image, prior, **params).postprocess(alpha=alpha)

