"""``histoseg demo``: napari with the sample image, the Segment widget and its result."""

from __future__ import annotations


def run_demo(image=None, screenshot=None, model=None) -> int:
    import napari

    from napari_histoseg.plugin.samples import breast_carcinoma
    from napari_histoseg.plugin.widgets.segment import MODEL_FILE, SegmentWidget

    viewer = napari.Viewer(title="napari-histoseg demo")
    viewer.window.resize(1500, 950)
    if image:
        layers = viewer.open(image, plugin="napari-histoseg")
        layer = layers[0]
    else:
        data, kwargs, _ = breast_carcinoma()[0]
        layer = viewer.add_image(data, **kwargs)
    widget = SegmentWidget(viewer)
    viewer.window.add_dock_widget(widget, name="Segment tumour", area="right")
    widget.image.value = layer
    if model:
        widget.model.value = MODEL_FILE
        widget.model_file.value = model
    viewer.reset_view()
    worker = widget.run()

    if screenshot:
        from qtpy.QtCore import QTimer

        def shoot(*_):
            viewer.reset_view()

            def grab():
                viewer.screenshot(screenshot, canvas_only=False)
                print(f"screenshot written to {screenshot}")
                viewer.close()

            QTimer.singleShot(1500, grab)

        if worker is None:
            shoot()
        else:
            worker.finished.connect(shoot)
    napari.run()
    return 0
