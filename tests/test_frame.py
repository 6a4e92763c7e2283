"""Frame resampling: landmarks land where the target frame says (index coordinates, pixel centres on integers)."""

import jax.numpy as jnp
import numpy as np
import pytest

from opomjax import frame as frame_lib

TARGET = frame_lib.make_frame("target", (150, 150), [[49.0, 44.2], [102.4, 44.4], [75.5, 74.8], [53.3, 105.8],
                                                     [97.5, 106.0]])


def coordinate_ramp(height: int, width: int) -> np.ndarray:
  """An image whose channels 0 and 1 hold each pixel's own x and y index (bilinear sampling keeps it exact)."""
  ys, xs = np.mgrid[0:height, 0:width].astype(np.float32)
  return np.stack([xs, ys, np.zeros_like(xs)], -1)


@pytest.mark.parametrize("antialias", [True, False])
@pytest.mark.parametrize("src,dst", [(frame_lib.CANONICAL, TARGET), (TARGET, frame_lib.CANONICAL),
                                     (frame_lib.CANONICAL, frame_lib.ARCFACE_112)])
def test_resample_samples_the_source_point_of_each_target_pixel(src, dst, antialias):
  out = np.asarray(frame_lib.resample(jnp.asarray(coordinate_ramp(*src.size))[None], src, dst,
                                      antialias=antialias))[0]
  # Independent: the least-squares scale + translation from numpy's lstsq, inverted per target pixel.
  src_pts, dst_pts = src.landmarks_array, dst.landmarks_array
  design = np.concatenate([src_pts.reshape(-1, 1), np.tile(np.eye(2), (5, 1))], axis=1)
  (scale, tx, ty), *_ = np.linalg.lstsq(design, dst_pts.reshape(-1), rcond=None)
  qy, qx = np.mgrid[0:dst.size[0], 0:dst.size[1]]
  want_x, want_y = (qx - tx) / scale, (qy - ty) / scale
  # Away from the border (where the sample's support leaves the source), and where shrinking averages a
  # neighbourhood of a linear ramp, which keeps its centre value.
  h, w = src.size
  inside = (want_x > 2) & (want_x < w - 3) & (want_y > 2) & (want_y < h - 3)
  assert inside.sum() > 0.5 * inside.size
  np.testing.assert_allclose(out[..., 0][inside], want_x[inside], atol=0.05)
  np.testing.assert_allclose(out[..., 1][inside], want_y[inside], atol=0.05)


def test_resample_puts_a_landmark_spot_on_the_target_landmark():
  # A small Gaussian spot at each source landmark; its intensity centroid must land on the target landmark
  # (a target that is an exact scaled and shifted copy of the source, so that every landmark fits exactly).
  src = frame_lib.CANONICAL
  dst = frame_lib.make_frame("exact", (150, 150), 1.51 * src.landmarks_array + np.array([-21.4, -39.9]))
  ys, xs = np.mgrid[0:src.size[0], 0:src.size[1]].astype(np.float64)
  for (x0, y0), (x1, y1) in zip(src.landmarks_array, dst.landmarks_array):
    spot = np.exp(-((xs - x0)**2 + (ys - y0)**2) / (2 * 1.5**2)).astype(np.float32)
    out = np.asarray(frame_lib.resample(jnp.asarray(np.repeat(spot[..., None], 3, -1))[None], src, dst))[0, ..., 0]
    qy, qx = np.mgrid[0:dst.size[0], 0:dst.size[1]]
    near = (np.abs(qx - x1) < 12) & (np.abs(qy - y1) < 12)
    weights = out * near
    assert abs((weights * qx).sum() / weights.sum() - x1) < 0.1
    assert abs((weights * qy).sum() / weights.sum() - y1) < 0.1
