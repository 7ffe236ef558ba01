"""Whole-slide mode of the Segment widget: stream the slide's file into an OME-Zarr.

The run (:func:`napari_histoseg.wsi.iter_segment_slide`) goes in a thread worker; the
result layers (``tumour probability``, ``tumour``, ``tissue``) are added as soon as the
store exists and read lazily from it, so they fill in block by block as the run writes
them. Cancel stops after the blocks in flight; Run again resumes where it stopped.
"""

from __future__ import annotations

from pathlib import Path

from magicgui.widgets import CheckBox, Container, FileEdit, FloatSpinBox, SpinBox
from napari.layers import Layer
from napari.utils.notifications import show_error, show_warning

from napari_histoseg.plugin.widgets._layers import hand_edited

WHOLE_SLIDE = "whole slide → OME-Zarr"
RESULT_LAYERS = ("tumour probability", "tumour", "tissue")


class WholeSlideOptions(Container):
    """Output folder, the two mpp settings and tissue-only, shown in whole-slide mode."""

    def __init__(self):
        super().__init__(labels=True, visible=False)
        self.outdir = FileEdit(label="Save in", mode="d",
                               tooltip="SLIDE.ome.zarr is written here (default: beside the slide)")
        self.model_mpp = FloatSpinBox(label="Model µm/px", min=0.0, max=50.0, step=0.01, value=0.0,
                                      tooltip="µm per pixel the model was trained at; 0 = from the checkpoint "
                                              "(the bundled model does not say: then nothing is rescaled)")
        self.slide_mpp = FloatSpinBox(label="Slide µm/px", min=0.0, max=50.0, step=0.01, value=0.0,
                                      tooltip="µm per pixel of the slide; 0 = from the file")
        self.tissue_only = CheckBox(text="Tissue only (skip white glass)", value=True)
        self.block = SpinBox(label="Block (px)", min=256, max=8192, step=256, value=2048,
                             tooltip="Edge of the square each task segments and writes (one zarr chunk)")
        self.extend([self.outdir, self.model_mpp, self.slide_mpp, self.tissue_only, self.block])


def slide_file(layer) -> Path:
    """The slide file behind an image layer; ValueError when it has none."""
    path = (layer.metadata or {}).get("path") or getattr(layer.source, "path", None)
    if not path or not Path(str(path)).is_file():
        raise ValueError(f"'{layer.name}' was not opened from a slide file; whole-slide mode reads the file "
                         "itself (open the slide with File > Open)")
    return Path(str(path))


def output_for(options: WholeSlideOptions, path: Path) -> Path:
    from napari_histoseg.wsi.cohort import output_path

    chosen = str(options.outdir.value)
    folder = Path(chosen) if chosen not in ("", ".") else path.parent
    return output_path(path, folder)


def run_whole_slide(widget, layer):
    """Start the whole-slide run of ``layer``'s file for the Segment ``widget``."""
    from napari_histoseg.wsi import iter_segment_slide

    opts = widget.wsi
    try:
        path = slide_file(layer)
        out = output_for(opts, path)
        ref = widget.model_ref()
    except Exception as e:  # noqa: BLE001 - shown, never raised into Qt
        show_error(f"Cannot segment the whole slide: {e}")
        return None
    kwargs = dict(model=ref, device=widget.device.value,
                  engine=widget.engine.value, tile=widget.tile.value, overlap=widget.overlap.value,
                  threshold=widget.threshold.value, tissue=opts.tissue_only.value, block=opts.block.value,
                  model_mpp=opts.model_mpp.value or None, slide_mpp=opts.slide_mpp.value or None)
    run = _Run(widget, layer, out)
    return widget.runner.start(
        lambda *_: iter_segment_slide(str(path), str(out), **kwargs), run.on_result,
        what="Whole-slide segmentation", label="Whole slide", describe=run.on_progress,
        message=f"Finding tissue and preparing {out.name}…",
        cancelled=f"Cancelled: the blocks written so far are kept in {out.name}; Run resumes.")


class _Run:
    """One whole-slide run: its layers and its messages."""

    def __init__(self, widget, source, out: Path):
        self.widget, self.source, self.out = widget, source, out
        self.layers: list = []

    def _add_layers(self):
        from napari_histoseg.wsi.layers import result_layer_data

        viewer = self.widget.viewer
        for name in RESULT_LAYERS:
            if name in viewer.layers and not hand_edited(viewer.layers[name]):
                viewer.layers.remove(name)
        translate = tuple(self.source.translate[-2:])
        for data, kw, kind in result_layer_data(self.out, translate):
            kw["metadata"] = {**kw["metadata"], "histoseg_source": self.source.name}
            self.layers.append(viewer.add_layer(Layer.create(data, kw, kind)))

    def _show_layers(self):
        if not self.layers:
            self._add_layers()
        else:
            for layer in self.layers:
                layer.refresh()

    def on_progress(self, value):
        """The layers fill in as blocks are written; ``(done, total, status)`` for the runner."""
        done, total = value
        self._show_layers()
        return done, total, f"{done} / {total} blocks with tissue written to {self.out.name}"

    def on_result(self, res):
        self._show_layers()
        for note in res.warnings:
            show_warning(note)
        if res.tumour_mm2 is not None:
            area = f"{res.tumour_mm2:.3g} mm² tumour"
        else:
            area = f"{res.tumour_px} px tumour (slide µm/px unknown)"
        frac = res.tumour_fraction_of_tissue
        of = f", {100 * frac:.1f} % of the tissue" if frac is not None else ", no tissue found"
        return (f"Done: {area}{of}; {100 * res.tiles_skipped_fraction:.0f} % of tiles skipped as "
                f"background, {res.seconds:.0f} s. Saved as {self.out}")
