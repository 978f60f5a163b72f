import numpy as np
import pytest
from PIL import Image

from nailseg.core.data.decode import read_image, read_mask
from nailseg.errors import DataError
from tests.conftest import write_image


@pytest.fixture
def square():
    mask = np.zeros((20, 30), np.uint8)
    mask[4:12, 6:20] = 1
    return mask


def test_mask_zero_one_png(tmp_path, square):
    path = write_image(tmp_path / "m.png", square)
    assert np.array_equal(read_mask(path), square.astype(bool))


def test_mask_zero_255_png_and_rgb(tmp_path, square):
    assert np.array_equal(read_mask(write_image(tmp_path / "a.png", square * 255)), square.astype(bool))
    rgb = np.repeat(square[..., None] * 255, 3, axis=2)
    assert np.array_equal(read_mask(write_image(tmp_path / "b.png", rgb)), square.astype(bool))


def test_a_mask_drawn_only_in_its_alpha_channel_is_refused_by_name(tmp_path, square):
    """One colour everywhere, the shape in the transparency: read by colour it would be an empty
    mask (black) or a full one (white), so it is refused with the fix; an RGBA mask whose colour
    carries the shape still reads."""
    for colour, rgb in ((0, (0, 0, 0)), (255, (255, 255, 255)), (255, (255, 0, 0))):  # black, white, red layers
        rgba = np.dstack([np.broadcast_to(np.array(rgb, np.uint8), (*square.shape, 3)), square * 255])
        path = tmp_path / f"alpha{colour}.png"  # the brightest channel is what the mask rule reads
        Image.fromarray(rgba, "RGBA").save(path)
        with pytest.raises(DataError, match=rf"alpha{colour}.png: the mask is one colour \({colour}\) with its shape "
                                            r"in the alpha channel.*getchannel\('A'\)"):
            read_mask(path)
    la = np.dstack([np.zeros_like(square), square * 255])
    Image.fromarray(la, "LA").save(tmp_path / "la.png")
    with pytest.raises(DataError, match="la.png: the mask is one colour"):
        read_mask(tmp_path / "la.png")
    drawn = np.dstack([np.repeat(square[..., None] * 255, 3, axis=2), np.full(square.shape, 255, np.uint8)])
    Image.fromarray(drawn, "RGBA").save(tmp_path / "drawn.png")
    assert np.array_equal(read_mask(tmp_path / "drawn.png"), square.astype(bool))


def test_mask_lossy_jpeg_is_thresholded(tmp_path, square):
    yy, xx = np.mgrid[:150, :230]
    big = (((yy - 70) / 45.0) ** 2 + ((xx - 101) / 63.0) ** 2 < 1).astype(np.uint8) * 255
    path = write_image(tmp_path / "m.jpg", np.repeat(big[..., None], 3, axis=2), quality=60)
    raw = np.asarray(Image.open(path))
    assert len(np.unique(raw)) > 2  # the JPEG really is lossy
    got = read_mask(path)
    assert got.dtype == bool
    assert (got != big.astype(bool)).mean() < 0.01


def test_mask_sixteen_bit(tmp_path, square):
    path = tmp_path / "m16.png"
    Image.fromarray((square.astype(np.uint16) * 65535)).save(path)
    assert np.array_equal(read_mask(path), square.astype(bool))
    # a 16-bit mask whose foreground is 200 (below half of 65535) is background
    Image.fromarray((square.astype(np.uint16) * 200)).save(path)
    assert not read_mask(path).any()


def test_image_modes_become_rgb(tmp_path):
    gray = np.full((10, 12), 77, np.uint8)
    assert read_image(write_image(tmp_path / "g.png", gray)).shape == (10, 12, 3)
    rgba = np.zeros((10, 12, 4), np.uint8)
    rgba[..., 0] = 200
    img = read_image(write_image(tmp_path / "rgba.png", rgba))
    assert img.shape == (10, 12, 3) and img[0, 0, 0] == 200


def test_truncated_jpeg_is_refused(tmp_path):
    path = write_image(tmp_path / "t.jpg", np.random.default_rng(0).integers(0, 255, (200, 200, 3), dtype=np.uint8))
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(DataError, match="t.jpg: corrupt or truncated"):
        read_image(path)


def test_zero_byte_and_not_an_image(tmp_path):
    (tmp_path / "z.png").write_bytes(b"")
    with pytest.raises(DataError, match="z.png: empty file"):
        read_mask(tmp_path / "z.png")
    (tmp_path / "x.jpg").write_text("hello, not a picture")
    with pytest.raises(DataError, match="x.jpg: not an image"):
        read_image(tmp_path / "x.jpg")


@pytest.mark.parametrize("mode, fmt", [("CMYK", "JPEG"), ("P", "PNG"), ("LA", "PNG"), ("1", "PNG"), ("F", "TIFF"),
                                       ("RGB", "WEBP"), ("RGB", "BMP"), ("P", "GIF"), ("RGB", "PPM")])
def test_every_accepted_format_and_mode_gives_rgb_uint8(tmp_path, mode, fmt):
    rgb = Image.fromarray(np.random.default_rng(0).integers(0, 255, (10, 12, 3), dtype=np.uint8))
    img = rgb.convert("L").convert("F") if mode == "F" else rgb.convert(mode)
    path = tmp_path / f"photo.{fmt.lower()}"
    img.save(path, fmt)
    arr = read_image(path)
    assert arr.shape == (10, 12, 3) and arr.dtype == np.uint8


@pytest.mark.parametrize("payload", [
    b"%!PS-Adobe-3.0 EPSF-3.0\n%%BoundingBox: 0 0 10 10\n",  # Pillow hands EPS to Ghostscript
    b"<svg xmlns='http://www.w3.org/2000/svg'/>",
    b"8BPS" + bytes(30),                                     # a Photoshop header
])
def test_formats_outside_the_allow_list_are_refused_by_name(tmp_path, payload, monkeypatch):
    from PIL import EpsImagePlugin

    monkeypatch.setattr(EpsImagePlugin, "has_ghostscript", lambda: pytest.fail("Ghostscript was consulted"))
    path = tmp_path / "renamed.jpg"
    path.write_bytes(payload)
    with pytest.raises(DataError, match=r"renamed.jpg: not an image file nailseg decodes \(JPEG, PNG"):
        read_image(path)
