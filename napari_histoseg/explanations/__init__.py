"""Why the model marked a region, and where it is unsure: Grad-CAM, SHAP and uncertainty.

One entry point, :func:`explain` (and its generator twin :func:`iter_explain` for a
napari worker), returns a float32 heat map with the shape of the image, or of the
requested region, computed tile by tile with the inference engine's windows and blending.

========== ======================================================== ====================
method     what the map is                                          range
========== ======================================================== ====================
gradcam    Grad-CAM (captum ``LayerGradCam``) of the tumour target   0 .. 1 (normalised)
           on a network layer, upsampled to the image
gradcam-  the default: Grad-CAM times the positive part of input     0 .. 1 (normalised)
ixg        x gradient (the most faithful by the deletion test)
hirescam   HiResCAM: gradient x activation per location of a layer  0 .. 1 (normalised)
inputxgrad (x - blurred x) * gradient, summed over RGB, smoothed 2 px  -1 .. 1 (normalised)
shap       GradientShap (captum) of the tumour target against a      -1 .. 1 (normalised)
           heavily blurred copy of the image, summed over RGB
superpixel Kernel SHAP over SLIC regions of the view (each coalition  -1 .. 1 (normalised)
-shap      one forward pass; value per pixel of each region)
entropy    predictive entropy of the tumour probability, in bits     0 .. 1 (absolute)
mc-dropout standard deviation of the tumour probability over N       0 .. 0.5 (absolute)
           passes with only the dropout layers switched on
tta        standard deviation of the tumour probability over the 8   0 .. 0.5 (absolute)
           flips and quarter turns
tta-       entropy (bits) of the mean tumour probability over the    0 .. 1 (absolute)
entropy    8 flips and quarter turns
tta-       "tta-entropy or near the predicted outline":              0 .. 1 (absolute)
boundary   1 - (1 - H)(1 - exp(-d / 32 px))
========== ======================================================== ====================

Which one predicts the model's errors best, and which saliency map is the most faithful, is
measured by ``benchmarks/bench_explain.py`` (BENCHMARKS.md › Explanations); the defaults are
``DEFAULT_SALIENCY`` and ``DEFAULT_UNCERTAINTY`` in :mod:`.methods`. What each costs before
it runs: :func:`napari_histoseg.explanations.cost.estimate`.

What the colours mean (red high, blue low, one colour map for all):

* **gradcam**: red where the layer's features that raise the tumour score are
  active: the places the model looked at to call the target tumour. Never negative.
* **shap**: red pixels push the target towards *tumour*, blue pixels push it away
  from tumour (towards not tumour), both compared with the same tissue blurred
  beyond recognition (so what counts is structure: nuclei, glands, stroma fibres,
  not the overall stain colour). White/neutral: no effect.
* **entropy**, **mc-dropout**: red where the model is unsure. Entropy is high where
  the probability is near 0.5; MC-dropout spread is high where small perturbations of
  the network change its answer.

Example
-------
>>> from napari_histoseg import load_model                      # doctest: +SKIP
>>> from napari_histoseg.explanations import explain                 # doctest: +SKIP
>>> heat = explain(rgb, load_model(), "gradcam", target="mask") # doctest: +SKIP

The package imports neither torch nor napari until a map is computed.
"""

from __future__ import annotations

from napari_histoseg.explanations.explain import explain, iter_explain
from napari_histoseg.explanations.methods import METHODS, TARGETS, ExplainError

__all__ = ["METHODS", "TARGETS", "ExplainError", "explain", "iter_explain"]

