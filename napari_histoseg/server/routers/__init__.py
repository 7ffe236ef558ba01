"""One FastAPI router per resource of ``histoseg serve``: models, inference, explanations,
fine-tune jobs. Each reaches tasks through the registry (:mod:`napari_histoseg.tasks`) and the
server's state (``request.app.state``: ``store``, ``jobs``, ``config``, ``workdir``)."""
