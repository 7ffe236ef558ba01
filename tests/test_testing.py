"""The synthetic builders of napari_histoseg.testing write folders each task's reader accepts."""

from __future__ import annotations

import subprocess
import sys

import numpy as np

from napari_histoseg import testing


def test_tumour_folder_loads_with_its_masks(tmp_path):
    from napari_histoseg.io.dataset import load_dataset

    ds = load_dataset(testing.tumour_dataset(tmp_path / "t", n=4, groups=list("aabb")))
    assert len(ds) == 4
    img, mask = ds.load(1)
    assert img.shape == (64, 64, 3) and set(np.unique(mask)) == {0, 1}
    assert img[mask == 1].mean() < img[mask == 0].mean()  # tumour is the dark part


def test_nuclei_folder_loads_one_label_per_disk(tmp_path):
    from napari_histoseg.nuclei.data import load_instances

    root = testing.nuclei_dataset(tmp_path / "n")
    train, test = load_instances(root, "train"), load_instances(root, "test")
    assert len(train) == len(test) == 1 and train[0].mpp == 0.25
    assert len(np.unique(train[0].labels)) == 4  # background and three nuclei


def test_classification_folder_has_both_classes_by_patient(tmp_path):
    from napari_histoseg.classifier.data import load_classification

    data = load_classification(testing.classification_dataset(tmp_path / "c", patients=2, per=2))
    assert sorted(set(np.asarray(data.labels).tolist())) == [0, 1] and len(set(data.groups)) == 4


def test_testing_imports_neither_napari_nor_pytest():
    code = "import napari_histoseg.testing, sys; print('napari' in sys.modules, 'pytest' in sys.modules)"
    out = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True, check=True)
    assert out.stdout.split() == ["False", "False"]
