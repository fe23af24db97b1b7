"""3D position and size of a segmented object from a registered depth image (pure numpy).

The depth image is registered to the camera image (same viewpoint and field of view), so a
mask pixel (u, v) with depth Z back-projects through the pinhole model of ``camera_info``:
X = (u - cx) Z / fx, Y = (v - cy) Z / fy, in the camera's optical frame (x right, y down,
z forward).
"""

from __future__ import annotations

from dataclasses import dataclass

import numpy as np


class GeometryError(ValueError):
    """Camera parameters or depth that cannot be used for 3D; the message says which."""


@dataclass(frozen=True)
class Intrinsics:
    """Pinhole camera parameters of an image of ``width`` x ``height`` pixels."""

    fx: float
    fy: float
    cx: float
    cy: float
    width: int
    height: int

    def scaled_to(self, height: int, width: int) -> Intrinsics:
        """The same camera seen at another resolution (e.g. a half-size depth image).

        :param height: rows of the other image.
        :param width: columns of the other image.
        :return: intrinsics for that size.
        """
        if (height, width) == (self.height, self.width):
            return self
        sx, sy = width / self.width, height / self.height
        # Pixel centres sit at +0.5: scale the continuous coordinate, not the index.
        return Intrinsics(
            self.fx * sx,
            self.fy * sy,
            (self.cx + 0.5) * sx - 0.5,
            (self.cy + 0.5) * sy - 0.5,
            width,
            height,
        )


@dataclass(frozen=True)
class Geometry3D:
    """Where an object is and how big it looks, in metres in the optical frame.

    :param centroid: float64 (3,), mean of the object's back-projected inlier points.
    :param extent: float64 (3,), max - min of those points per axis (axis-aligned size).
    :param points: how many mask pixels had valid depth and were kept as inliers.
    """

    centroid: np.ndarray
    extent: np.ndarray
    points: int


def intrinsics_from_k(k: list[float] | np.ndarray, height: int, width: int) -> Intrinsics:
    """Read the 3x3 row-major camera matrix of ``sensor_msgs/CameraInfo.k``.

    :param k: 9 values: fx 0 cx / 0 fy cy / 0 0 1.
    :param height: ``CameraInfo.height``.
    :param width: ``CameraInfo.width``.
    :return: the intrinsics.
    :raises GeometryError: a zero or non-finite focal length or a zero image size (an
        uncalibrated camera publishes K = 0).
    """
    values = np.asarray(k, dtype=np.float64).reshape(-1)
    if values.size != 9:
        raise GeometryError(f'camera matrix K has {values.size} values, expected 9')
    fx, cx, fy, cy = values[0], values[2], values[4], values[5]
    if not (np.isfinite(values).all() and fx > 0 and fy > 0):
        raise GeometryError(f'camera_info K has fx={fx}, fy={fy}: the camera is not calibrated')
    if height <= 0 or width <= 0:
        raise GeometryError(f'camera_info size {width}x{height} is empty')
    return Intrinsics(float(fx), float(fy), float(cx), float(cy), int(width), int(height))


def mask_geometry(
    mask: np.ndarray,
    depth_m: np.ndarray,
    intrinsics: Intrinsics,
    min_points: int = 20,
    max_points: int = 20000,
    inlier_mad: float = 3.0,
) -> Geometry3D | None:
    """Back-project a mask through a registered depth image and summarise the points.

    Pixels at a mask's border often see the background far behind the object; points whose
    depth lies more than ``inlier_mad`` scaled median absolute deviations (at least 2 cm)
    from the median depth are dropped before the centroid and extent are taken.

    :param mask: bool (H, W) at the camera image's size.
    :param depth_m: float32 (Hd, Wd) metres, NaN where invalid; resampled (nearest) to
        (H, W) when its size differs.
    :param intrinsics: of the camera image; rescaled when its size differs from (H, W).
    :param min_points: fewer valid points than this gives None.
    :param max_points: larger masks are subsampled evenly to about this many points.
    :param inlier_mad: outlier cut-off in scaled MADs.
    :return: the geometry, or None when the mask has too little valid depth.
    """
    height, width = mask.shape
    if depth_m.shape != (height, width):
        rows = (np.arange(height) * depth_m.shape[0]) // height
        cols = (np.arange(width) * depth_m.shape[1]) // width
        depth_m = depth_m[rows[:, None], cols[None, :]]
    camera = intrinsics.scaled_to(height, width)
    v, u = np.nonzero(mask)
    if u.size > max_points:
        stride = -(-u.size // max_points)
        u, v = u[::stride], v[::stride]
    z = depth_m[v, u].astype(np.float64)
    valid = np.isfinite(z) & (z > 0)
    if np.count_nonzero(valid) < min_points:
        return None
    u, v, z = u[valid], v[valid], z[valid]
    median = np.median(z)
    spread = max(inlier_mad * 1.4826 * np.median(np.abs(z - median)), 0.02)
    keep = np.abs(z - median) <= spread
    if np.count_nonzero(keep) < min_points:
        return None
    u, v, z = u[keep], v[keep], z[keep]
    points = np.stack(
        [(u - camera.cx) * z / camera.fx, (v - camera.cy) * z / camera.fy, z], axis=1
    )
    return Geometry3D(
        centroid=points.mean(axis=0),
        extent=points.max(axis=0) - points.min(axis=0),
        points=int(z.size),
    )
