"""``histoseg serve``: the models on a GPU machine, over HTTP, for napari elsewhere.

The server (:func:`napari_histoseg.server.app.create_app`) loads its models once on its
device and answers the same calls as :class:`~napari_histoseg.backends.local.LocalBackend`;
:class:`~napari_histoseg.backends.remote.RemoteBackend` is its client. Arrays travel as raw
bytes with ``X-Shape``/``X-Dtype`` headers (PNG and NPY are accepted too), never pickle.

This package imports nothing heavy at import time (the CLI parser imports ``cli``).
"""
