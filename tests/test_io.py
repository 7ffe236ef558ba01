"""Tests of napari_histoseg.io (open_image, Slide, validation, npe2 reader) and the samples.

No napari viewer or Qt needed; the two napari-level checks use napari's
``ViewerModel`` / layer classes only and skip without the installed manifest.
"""

from __future__ import annotations

import numpy as np
import pytest
import tifffile
from PIL import Image as PILImage

from napari_histoseg.io import (
    ImageFormatError,
    Slide,
    check_lazy_rgb,
    ensure_rgb_uint8,
    open_image,
)
from napari_histoseg.io.lazy import LazyRGBLevel
from napari_histoseg.io.metadata import aperio_metadata, ome_mpp
from napari_histoseg.plugin.reader import get_reader, read_image_layers
from napari_histoseg.plugin.samples import breast_carcinoma, sample_path, skin_slide, tumour_nuclei

SVS = sample_path("cmu_small_region.svs")
PNG = sample_path("tiatoolbox_target_image.png")
JPG = sample_path("stardist_histo.jpg")


# --------------------------------------------------------------------------- fixtures
def _rgb(h, w, seed=0):
    """A smooth-ish RGB uint8 test image (compresses well, not constant)."""
    yy, xx = np.mgrid[0:h, 0:w]
    rng = np.random.default_rng(seed)
    noise = rng.integers(0, 8, (h, w), dtype=np.uint8)
    return np.stack([(yy * 7) % 256, (xx * 5) % 256, ((yy + xx) % 256) ^ noise], axis=-1).astype(np.uint8)


@pytest.fixture(scope="module")
def pyramid_levels():
    img = _rgb(512, 768)
    return [img, img[::2, ::2].copy(), img[::4, ::4].copy()]


@pytest.fixture(scope="module")
def ome_pyramid(tmp_path_factory, pyramid_levels):
    """Pyramidal OME-TIFF (SubIFDs), zlib tiles, PhysicalSize 250 nm."""
    path = tmp_path_factory.mktemp("io") / "pyramid.ome.tif"
    l0, *rest = pyramid_levels
    kw = dict(tile=(128, 128), photometric="rgb", compression="zlib")
    with tifffile.TiffWriter(path, ome=True) as tw:
        tw.write(l0, subifds=len(rest), metadata={
            "axes": "YXS", "PhysicalSizeX": 250, "PhysicalSizeXUnit": "nm",
            "PhysicalSizeY": 250, "PhysicalSizeYUnit": "nm"}, **kw)
        for level in rest:
            tw.write(level, subfiletype=1, **kw)
    return path


@pytest.fixture(scope="module")
def svs_pyramid(tmp_path_factory, pyramid_levels):
    """Aperio-style SVS: tiled levels + thumbnail + label, MPP/AppMag in the description."""
    path = tmp_path_factory.mktemp("io") / "pyramid.svs"
    l0, l1, l2 = pyramid_levels
    head = "Aperio Image Library v12.0.0\r\n"
    kw = dict(photometric="rgb", compression="zlib", metadata=None)
    with tifffile.TiffWriter(path) as tw:
        desc0 = head + "768x512 (128x128)|AppMag = 40|MPP = 0.2520"
        tw.write(l0, tile=(128, 128), description=desc0, **kw)
        tw.write(l2, description=head + "thumbnail", **kw)
        tw.write(l1, tile=(128, 128), description=head + "384x256", **kw)
        tw.write(l2, tile=(128, 128), description=head + "192x128", **kw)
        tw.write(l2[:50, :60], subfiletype=1, description=head + "label", **kw)
    return path


def _write_tiff(path, data, **kw):
    tifffile.imwrite(path, data, metadata=None, **kw)
    return path


# --------------------------------------------------------------------------- samples
def test_open_png_sample():
    with open_image(PNG) as slide:
        assert slide.shape == (1000, 1000, 3) and slide.dtype == np.uint8
        assert slide.level_count == 1 and slide.level_downsamples == [1.0]
        assert slide.mpp is None and slide.warnings == []
        assert slide.thumbnail(256).shape == (256, 256, 3)


def test_open_jpeg_sample():
    slide = open_image(JPG)
    assert slide.shape == (300, 500, 3) and slide.dtype == np.uint8
    assert slide.metadata["format"] == "jpeg"


def test_open_svs_sample_lazily():
    with open_image(SVS) as slide:
        assert slide.shape == (2967, 2220, 3) and slide.dtype == np.uint8
        assert slide.level_count == 1  # thumbnail/label/macro are not levels
        assert not isinstance(slide.levels[0], np.ndarray)
        assert slide.mpp == pytest.approx(0.499)
        assert slide.metadata["objective_power"] == 20
        assert slide.metadata["associated_images"] == ["Thumbnail", "Label", "Macro"]
        region = slide.read_region(0, 1000, 700, 300, 200)
        full = tifffile.imread(SVS, series=0)
        np.testing.assert_array_equal(region, full[1000:1300, 700:900])
        # bottom-right corner: clipped, not padded
        assert slide.read_region(0, 2900, 2200, 100, 100).shape == (67, 20, 3)


def test_sample_functions_return_layer_data():
    for fn, shape in ((breast_carcinoma, (1000, 1000, 3)), (tumour_nuclei, (300, 500, 3))):
        [(data, kwargs, kind)] = fn()
        assert kind == "image" and isinstance(data, np.ndarray)
        assert data.shape == shape and data.dtype == np.uint8
        assert kwargs["rgb"] is True and kwargs["name"]
        assert kwargs["metadata"]["path"].endswith((".png", ".jpg"))
    [(levels, kwargs, kind)] = skin_slide()
    assert kwargs["multiscale"] is True and len(levels) == 1
    assert levels[0].shape == (2967, 2220, 3) and levels[0].dtype == np.uint8
    assert kwargs["scale"] == pytest.approx((0.499, 0.499))
    assert np.asarray(levels[0][:16, :16]).dtype == np.uint8


def test_sample_path():
    assert sample_path().name == "tiatoolbox_target_image.png"
    assert sample_path("skin_slide") == SVS
    assert (SVS.parent / "README.md").is_file()
    with pytest.raises(KeyError, match="unknown sample"):
        sample_path("nope.png")


# --------------------------------------------------------------------------- pyramids
@pytest.mark.parametrize("which", ["ome_pyramid", "svs_pyramid"])
def test_pyramid_levels_and_regions(request, which, pyramid_levels):
    with open_image(request.getfixturevalue(which)) as slide:
        assert slide.level_shapes == [lv.shape for lv in pyramid_levels]
        assert slide.level_downsamples == [1.0, 2.0, 4.0]
        assert slide.mpp == pytest.approx(0.25 if which == "ome_pyramid" else 0.252)
        for level, ref in enumerate(pyramid_levels):
            np.testing.assert_array_equal(slide.read_region(level, 30, 50, 70, 90), ref[30:100, 50:140])
        assert slide.best_level_for_downsample(3.0) == 1


def test_svs_pyramid_metadata(svs_pyramid):
    with open_image(svs_pyramid) as slide:
        assert slide.metadata["format"] == "svs" and slide.metadata["objective_power"] == 40
        assert slide.metadata["associated_images"] == ["Thumbnail", "Label"]


def test_thumbnail_reads_smallest_sufficient_level(ome_pyramid):
    with open_image(ome_pyramid) as slide:
        touched = set()

        class Spy:
            def __init__(self, i, arr):
                self.i, self.arr, self.shape, self.dtype, self.chunks = i, arr, arr.shape, arr.dtype, arr.chunks

            def __getitem__(self, key):
                touched.add(self.i)
                return self.arr[key]

        slide.levels = [Spy(i, lv) for i, lv in enumerate(slide.levels)]
        thumb = slide.thumbnail(150)  # level 2 is 192 x 128: large enough
        assert thumb.shape == (100, 150, 3) and thumb.dtype == np.uint8
        assert touched == {2}
        touched.clear()
        assert slide.thumbnail(300).shape == (200, 300, 3) and touched == {1}


def test_region_read_decodes_only_touched_tiles(tmp_path):
    path = _write_tiff(tmp_path / "big.tif", _rgb(1024, 1024), tile=(64, 64),
                       photometric="rgb", compression="zlib")
    with open_image(path) as slide:
        z = getattr(slide.levels[0], "source", slide.levels[0])   # the zarr array under the RGB view
        store = z.store_path.store if hasattr(z, "store_path") else z.store
        keys = []
        original = store.get

        async def counting_get(key, *args, **kwargs):
            keys.append(key)
            return await original(key, *args, **kwargs)

        store.get = counting_get
        region = slide.read_region(0, 500, 500, 128, 128)
        assert region.shape == (128, 128, 3)
        chunk_reads = [k for k in keys if not k.rsplit("/", 1)[-1].startswith(".") and "zarr" not in k]
        assert 1 <= len(chunk_reads) <= 9  # 3 x 3 tiles of 64 px, out of 256 tiles
        assert len(chunk_reads) / (16 * 16) < 0.05


# --------------------------------------------------------------------------- mpp
def test_mpp_from_metadata(tmp_path):
    assert aperio_metadata("Aperio Image Library v11|AppMag = 20|MPP = 0.4990") == {
        "mpp": 0.499, "objective_power": 20.0}
    assert aperio_metadata("not aperio")["mpp"] is None
    xml = ('<OME xmlns="http://www.openmicroscopy.org/Schemas/OME/2016-06"><Image>'
           '<Pixels PhysicalSizeX="0.0005" PhysicalSizeXUnit="mm"/></Image></OME>')
    assert ome_mpp(xml) == pytest.approx(0.5)
    img = _rgb(64, 64)
    t72 = _write_tiff(tmp_path / "72dpi.tif", img, photometric="rgb",
                      resolution=(72, 72), resolutionunit="INCH")
    t40k = _write_tiff(tmp_path / "scan.tif", img, photometric="rgb",
                       resolution=(40000, 40000), resolutionunit="CENTIMETER")
    PILImage.fromarray(img).save(tmp_path / "72dpi.png", dpi=(72, 72))
    PILImage.fromarray(img).save(tmp_path / "scan.png", dpi=(50800, 50800))
    assert open_image(t72).mpp is None
    assert open_image(t40k).mpp == pytest.approx(0.25)
    assert open_image(tmp_path / "72dpi.png").mpp is None
    assert open_image(tmp_path / "scan.png").mpp == pytest.approx(0.5, rel=1e-3)


# --------------------------------------------------------------------------- conversions
def test_ensure_rgb_uint8_conversions():
    rgb = _rgb(8, 9)
    out, warnings = ensure_rgb_uint8(rgb)
    assert out is rgb and warnings == []

    rgba = np.dstack([rgb, np.full((8, 9), 7, np.uint8)])
    out, warnings = ensure_rgb_uint8(rgba)
    np.testing.assert_array_equal(out, rgb)
    assert "alpha" in warnings[0] and rgba.shape == (8, 9, 4)

    u16 = rgb.astype(np.uint16) * 257
    u16[0, 0] = 65535
    before = u16.copy()
    out, warnings = ensure_rgb_uint8(u16)
    assert out.dtype == np.uint8 and out[0, 0, 0] == 255 and "uint16" in warnings[0]
    np.testing.assert_array_equal(out[1:], rgb[1:])
    np.testing.assert_array_equal(u16, before)  # input untouched

    twelve = np.full((4, 4, 3), 4095, np.uint16)
    out, warnings = ensure_rgb_uint8(twelve)
    assert (out == 255).all() and "12 of 16 bits" in warnings[0]

    for f in (rgb / 255.0, rgb.astype(np.float32)):
        out, warnings = ensure_rgb_uint8(f)
        np.testing.assert_array_equal(out, rgb)
        assert "float" in warnings[0]


@pytest.mark.parametrize("array, match", [
    (np.zeros((20, 30), np.uint8), r"single-channel \(grayscale\) image of shape \(20, 30\)"),
    (np.zeros((20, 30, 1), np.uint8), "single-channel"),
    (np.zeros((20, 30, 2), np.uint8), "two-channel"),
    (np.zeros((20, 30, 7), np.uint8), "7 channels"),
    (np.zeros((5, 20, 30, 3), np.uint8), "4-D"),
    (np.zeros((10, 64, 64), np.uint8), "3-D stack"),
    (np.zeros((3, 64, 64), np.uint8), "channel-first"),
    (np.zeros((0, 30, 3), np.uint8), "empty"),
    (np.zeros((4, 4, 3), bool), "dtype bool"),
    (np.full((4, 4, 3), 300.0), r"values in \[300, 300\]"),
    (np.full((4, 4, 3), np.nan), "NaN"),
])
def test_ensure_rgb_uint8_refuses(array, match):
    with pytest.raises(ImageFormatError, match=match) as info:
        ensure_rgb_uint8(array)
    assert "needs an RGB H&E image" in str(info.value)


def test_check_lazy_rgb_does_not_read():
    class NoRead:
        def __init__(self, shape, dtype):
            self.shape, self.dtype = shape, np.dtype(dtype)

        def __getitem__(self, key):
            raise AssertionError("read")

        def __array__(self, *a, **k):
            raise AssertionError("read")

    assert check_lazy_rgb(NoRead((50_000, 40_000, 3), "uint8")) == []
    assert "16-bit" in check_lazy_rgb(NoRead((50_000, 40_000, 3), "uint16"))[0]
    assert "alpha" in check_lazy_rgb(NoRead((50_000, 40_000, 4), "uint8"))[0]
    with pytest.raises(ImageFormatError, match="grayscale"):
        check_lazy_rgb(NoRead((50_000, 40_000), "uint8"))


def test_lazy_rgb_level_indexing():
    src = np.arange(4 * 5 * 6, dtype=np.uint16).reshape(4, 5, 6) * 500  # (C, H, W)
    level = LazyRGBLevel(src, channel_first=True, in_range=(0, 65535))
    ref = np.moveaxis(src[:3], 0, -1)
    ref8 = np.rint(ref / 65535 * 255).astype(np.uint8)
    assert level.shape == (5, 6, 3) and level.dtype == np.uint8 and level.size == 90
    np.testing.assert_array_equal(level[...], ref8)
    np.testing.assert_array_equal(level[1:3, ::2, 1], ref8[1:3, ::2, 1])
    np.testing.assert_array_equal(level[2, 3], ref8[2, 3])
    np.testing.assert_array_equal(np.asarray(level), ref8)


def test_unusual_tiffs_convert_lazily(tmp_path):
    rgb = _rgb(256, 256)
    u16 = _write_tiff(tmp_path / "u16.tif", rgb.astype(np.uint16) * 257, photometric="rgb", tile=(64, 64))
    planar = _write_tiff(tmp_path / "planar.tif", np.moveaxis(rgb, -1, 0), photometric="rgb",
                         planarconfig="separate")
    rgba = _write_tiff(tmp_path / "rgba.tif", np.dstack([rgb, rgb[..., :1]]), photometric="rgb",
                       extrasamples=["unassalpha"])
    flt = _write_tiff(tmp_path / "float.tif", (rgb / 255.0).astype(np.float32), photometric="rgb")
    for path in (u16, planar, rgba, flt):
        with open_image(path) as slide:
            assert slide.shape == (256, 256, 3) and slide.dtype == np.uint8
            np.testing.assert_array_equal(slide.read_region(0, 10, 20, 30, 40), rgb[10:40, 20:60])
    assert "16" in open_image(u16).warnings[0]
    assert "alpha" in open_image(rgba).warnings[0]
    assert "[0, 1]" in open_image(flt).warnings[-1]


# --------------------------------------------------------------------------- bad files
def test_bad_files_give_clear_errors(tmp_path):
    text = tmp_path / "notes.tif"
    text.write_text("this is not an image\n")
    with pytest.raises(ImageFormatError, match="notes.tif.*TIFF"):
        open_image(text)

    data = PNG.read_bytes()
    truncated = tmp_path / "cut.png"
    truncated.write_bytes(data[: len(data) // 3])
    with pytest.raises(ImageFormatError, match="cut.png.*PNG"):
        open_image(truncated)

    with pytest.raises(FileNotFoundError, match="missing.svs"):
        open_image(tmp_path / "missing.svs")

    other = tmp_path / "scan.bmp"
    other.write_bytes(b"BM")
    with pytest.raises(ImageFormatError, match=r"scan.bmp.*unsupported file type '\.bmp'"):
        open_image(other)

    gray = tmp_path / "gray.png"
    PILImage.fromarray(np.zeros((20, 30), np.uint8)).save(gray)
    with pytest.raises(ImageFormatError, match=r"gray.png.*single-channel \(grayscale\)"):
        open_image(gray)

    gray_tif = _write_tiff(tmp_path / "gray.tif", np.zeros((20, 30), np.uint16))
    with pytest.raises(ImageFormatError, match=r"gray.tif.*grayscale"):
        open_image(gray_tif)

    stack = _write_tiff(tmp_path / "stack.tif", np.zeros((4, 20, 30, 3), np.uint8), photometric="rgb")
    with pytest.raises(ImageFormatError, match=r"stack.tif.*4-D"):
        open_image(stack)


def test_slide_from_array_and_clipping():
    slide = Slide.from_array(np.zeros((60, 40, 4), np.uint16), mpp=0.5)
    assert slide.shape == (60, 40, 3) and len(slide.warnings) == 2
    assert slide.read_region(0, -10, -10, 20, 20).shape == (10, 10, 3)
    assert slide.read_region(0, 100, 100, 5, 5).shape == (0, 0, 3)
    region = slide.read_region(0, 0, 0, 5, 5)
    region[:] = 9
    assert slide.levels[0].max() == 0  # regions are copies
    with pytest.raises(IndexError):
        slide.read_region(1, 0, 0, 5, 5)
    with pytest.raises(ValueError):
        slide.read_region(0, 0, 0, -1, 5)


# --------------------------------------------------------------------------- napari reader
def test_get_reader_claims_only_slides(tmp_path, ome_pyramid):
    """napari opens plain TIFFs, PNG and JPEG itself; we take slides (no reader-choice dialog)."""
    assert get_reader(str(tmp_path / "notes.txt")) is None
    assert get_reader(str(PNG)) is None and get_reader(str(JPG)) is None
    assert get_reader(str(SVS)) is read_image_layers
    assert get_reader([str(ome_pyramid)]) is read_image_layers
    assert get_reader([str(SVS), str(PNG)]) is None
    plain = _write_tiff(tmp_path / "plain.tif", np.zeros((64, 80, 3), np.uint8), photometric="rgb")
    assert get_reader(str(plain)) is None  # one level, small: napari's built-in reader
    assert get_reader(str(tmp_path / "missing.ome.tiff")) is None
    (tmp_path / "broken.tif").write_bytes(b"not a tiff")
    assert get_reader(str(tmp_path / "broken.tif")) is None
    (tmp_path / "other.ome.zarr").mkdir()
    (tmp_path / "other.ome.zarr" / ".zattrs").write_text('{"multiscales": []}')
    assert get_reader(str(tmp_path / "other.ome.zarr")) is None  # napari-ome-zarr's, not ours
    assert get_reader(str(tmp_path)) is None


def test_get_reader_claims_a_large_single_level_tiff(tmp_path, monkeypatch):
    import napari_histoseg.plugin.reader as reader

    path = _write_tiff(tmp_path / "big.tif", np.zeros((64, 300, 3), np.uint8), photometric="rgb", tile=(32, 32))
    assert get_reader(str(path)) is None
    monkeypatch.setattr(reader, "LARGE_TIFF_PX", 256)
    assert get_reader(str(path)) is read_image_layers


def test_manifest_patterns_leave_png_and_jpeg_to_napari():
    from importlib.resources import files

    import yaml

    manifest = yaml.safe_load(files("napari_histoseg").joinpath("napari.yaml").read_text())
    [reader] = manifest["contributions"]["readers"]
    assert not {"*.png", "*.jpg", "*.jpeg"} & set(reader["filename_patterns"])
    assert "*.svs" in reader["filename_patterns"]


def test_reader_layer_data(svs_pyramid, ome_pyramid):
    [(data, kwargs, kind)] = get_reader(str(svs_pyramid))(str(svs_pyramid))
    assert kind == "image" and kwargs["multiscale"] is True and kwargs["rgb"] is True
    assert [d.shape for d in data] == [(512, 768, 3), (256, 384, 3), (128, 192, 3)]
    assert kwargs["name"] == "pyramid" and kwargs["scale"] == pytest.approx((0.252, 0.252))
    assert kwargs["units"] == ("µm", "µm")
    meta = kwargs["metadata"]
    assert meta["path"] == str(svs_pyramid) and meta["mpp"] == pytest.approx(0.252)
    assert meta["level_downsamples"] == [1.0, 2.0, 4.0]

    [(data, kwargs, _)] = read_image_layers([str(ome_pyramid)])
    assert kwargs["name"] == "pyramid" and len(data) == 3

    [(data, kwargs, _)] = read_image_layers(str(PNG))
    assert isinstance(data, np.ndarray) and kwargs["multiscale"] is False
    assert kwargs["scale"] == (1.0, 1.0) and "units" not in kwargs


def test_napari_layer_is_multiscale(svs_pyramid):
    layers = pytest.importorskip("napari.layers")
    [(data, kwargs, _)] = read_image_layers(str(svs_pyramid))
    layer = layers.Image(data, **kwargs)
    assert layer.multiscale and layer.rgb and len(layer.data) == 3
    assert str(layer.units[0]) == "micrometer"
    assert tuple(layer.scale) == pytest.approx((0.252, 0.252))


def _manifest_installed() -> bool:
    try:
        from npe2 import PluginManager

        pm = PluginManager.instance()
        pm.discover()
        return bool(pm.get_manifest("napari-histoseg").contributions.readers)
    except Exception:
        return False


@pytest.mark.skipif(not _manifest_installed(), reason="napari-histoseg manifest not installed")
def test_real_viewer_opens_svs_through_plugin_as_multiscale(make_napari_viewer, svs_pyramid):
    viewer = make_napari_viewer()
    [layer] = viewer.open(str(svs_pyramid), plugin="napari-histoseg")
    assert len(layer.data) == 3 and layer.data[0].shape == (512, 768, 3)
    assert layer.multiscale and layer.rgb and layer.name == "pyramid"
    assert layer.metadata["mpp"] == pytest.approx(0.252)
