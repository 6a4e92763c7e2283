"""The channel conditions (opomjax.faces.channel): each changes an image as its real codec does."""

import io

import numpy as np
import pytest
from PIL import Image
from PIL import ImageFilter

from opomjax.faces import channel


def _natural_images(lfw_root, n=3, size=128):
  """Real LFW photos, centre-cropped and shrunk to ``size`` (float32, 0-255)."""
  paths = sorted(lfw_root.glob("*/*.jpg"))[:n]
  images = [np.asarray(Image.open(p).convert("RGB").crop((61, 61, 189, 189)).resize((size, size)), np.float32)
            for p in paths]
  return np.stack(images)


def test_none_rounds_to_nearest_and_clips_like_a_saved_photo():
  x = np.array([-3.0, 0.49, 0.5, 1.5, 2.5, 100.51, 254.6, 300.0], np.float32).reshape(1, 1, 8, 1)
  x = np.repeat(x, 3, axis=-1)
  out = channel.apply_condition(x, "none")[0, 0, :, 0]
  # Written out by hand: clip to [0, 255], nearest integer, ties to the even one.
  assert out.tolist() == [0.0, 0.0, 0.0, 2.0, 2.0, 101.0, 255.0, 255.0]
  assert channel.to_uint8(x).dtype == np.uint8
  np.testing.assert_array_equal(channel.apply_condition(x, "float")[0, 0, :, 0],
                                np.float32([0.0, 0.49, 0.5, 1.5, 2.5, 100.51, 254.6, 255.0]))


@pytest.mark.parametrize("condition,quality", [("jpeg90", 90), ("jpeg75", 75), ("jpeg50", 50)])
def test_jpeg_conditions_are_pillow_round_trips(lfw_root, condition, quality):
  images = _natural_images(lfw_root) + np.random.default_rng(0).uniform(-8, 8, (3, 128, 128, 3))
  out = channel.apply_condition(images, condition)
  for image, got in zip(images, out):
    buf = io.BytesIO()
    Image.fromarray(np.rint(np.clip(image, 0, 255)).astype(np.uint8)).save(buf, "JPEG", quality=quality)
    np.testing.assert_array_equal(got, np.asarray(Image.open(io.BytesIO(buf.getvalue())), np.float32))


def test_lower_jpeg_quality_loses_more(lfw_root):
  images = _natural_images(lfw_root)
  saved = channel.apply_condition(images, "none")
  errors = [np.abs(channel.apply_condition(images, c) - saved).mean() for c in ("jpeg90", "jpeg75", "jpeg50")]
  assert 0 < errors[0] < errors[1] < errors[2]


def test_resize_and_blur_are_pillow_operations_and_remove_fine_detail(lfw_root):
  images = _natural_images(lfw_root, n=2)
  saved = channel.to_uint8(images)
  for image, resized, blurred in zip(saved, channel.apply_condition(images, "resize0.5"),
                                     channel.apply_condition(images, "blur")):
    small = Image.fromarray(image).resize((64, 64), Image.Resampling.BICUBIC)
    np.testing.assert_array_equal(resized, np.asarray(small.resize((128, 128), Image.Resampling.BICUBIC)))
    np.testing.assert_array_equal(blurred, np.asarray(Image.fromarray(image).filter(ImageFilter.GaussianBlur(1))))
  # A pixel-scale checkerboard (the finest detail a mask can have) is mostly gone after either channel.
  board = (np.indices((128, 128)).sum(0) % 2 * 16 + 120)[None, :, :, None].repeat(3, -1).astype(np.float32)
  for condition in ("resize0.5", "blur"):
    assert np.abs(channel.apply_condition(board, condition) - 128).mean() < 0.25 * np.abs(board - 128).mean()


def test_bad_conditions_are_refused_with_the_known_names():
  assert channel.parse_conditions("none, jpeg75,none") == ("none", "jpeg75")
  with pytest.raises(ValueError, match="unknown 'jpeg80'.*jpeg75"):
    channel.parse_conditions("none,jpeg80")
  with pytest.raises(ValueError, match="empty"):
    channel.parse_conditions(" , ")
  with pytest.raises(ValueError, match=r"\(N, H, W, 3\)"):
    channel.apply_condition(np.zeros((4, 4, 3)), "none")
