"""BEV map-segmentation targets ``[S, bev_h, bev_w]`` rasterised with the devkit's ``NuScenesMap``.

Grid (docs/CONTRACTS.md): ``bev_h`` rows over y in [y_min, y_max] (row 0 at y_min), ``bev_w`` columns
over x in [x_min, x_max] (col 0 at x_min), in the LIDAR_TOP frame. ``get_map_mask`` rotates the map
by ``-patch_angle`` about the patch centre, so with the patch centred on the grid centre (in the map
frame) and ``patch_angle`` = the lidar's yaw, the patch axes are the lidar axes; its mask rows grow
with +y and columns with +x, which is exactly our grid.
"""

from __future__ import annotations

import contextlib
import io
import math
from collections.abc import Sequence
from pathlib import Path

import numpy as np

from bevforge.structures.boxes import yaw_from_quaternion


class MapTargetBuilder:
    """Caches one ``NuScenesMap`` per location (maps are loaded lazily, once per worker)."""

    def __init__(
        self,
        data_root: str | Path,
        layers: Sequence[str],
        point_cloud_range: Sequence[float],
        bev_hw: tuple[int, int],
    ) -> None:
        self.data_root = str(data_root)
        self.layers = list(layers)
        self.pcr = tuple(float(v) for v in point_cloud_range)
        self.bev_hw = bev_hw
        self._maps: dict[str, object] = {}

    def _map(self, location: str):  # -> NuScenesMap
        if not location:
            raise ValueError(
                "a sample has no map location (infos converted from a pickle store none); re-create the "
                "infos with `bevforge prepare` or set data.with_seg=false"
            )
        if location not in self._maps:
            from nuscenes.map_expansion.map_api import NuScenesMap

            path = Path(self.data_root) / "maps" / "expansion" / f"{location}.json"
            if not path.is_file():
                raise FileNotFoundError(
                    f"{path}: map expansion file not found; data.with_seg needs the nuScenes map expansion "
                    "(maps/expansion/<location>.json) in the data root, or set data.with_seg=false"
                )
            with contextlib.redirect_stdout(io.StringIO()):
                self._maps[location] = NuScenesMap(dataroot=self.data_root, map_name=location)
        return self._maps[location]

    def __call__(self, location: str, lidar2global: np.ndarray) -> np.ndarray:
        """[S, bev_h, bev_w] float32 {0, 1} for the lidar pose ``lidar2global [4, 4]`` (map = global)."""
        return seg_target(self._map(location), self.layers, lidar2global, self.pcr, self.bev_hw)


def seg_target(
    nusc_map,
    layers: Sequence[str],
    lidar2global: np.ndarray,
    point_cloud_range: Sequence[float],
    bev_hw: tuple[int, int],
) -> np.ndarray:
    """Rasterise ``layers`` of ``nusc_map`` into the BEV grid of one lidar pose; [S, bev_h, bev_w]."""
    from pyquaternion import Quaternion

    x0, y0, _, x1, y1, _ = (float(v) for v in point_cloud_range)
    centre_lidar = np.array([(x0 + x1) / 2, (y0 + y1) / 2, 0.0, 1.0])
    centre_map = np.asarray(lidar2global, dtype=np.float64) @ centre_lidar  # [4]
    yaw_rad = yaw_from_quaternion(Quaternion(matrix=np.asarray(lidar2global)[:3, :3], atol=1e-6, rtol=1e-6))
    patch_box = (float(centre_map[0]), float(centre_map[1]), y1 - y0, x1 - x0)  # (x, y, height, width)
    angle_deg = math.degrees(yaw_rad)
    out = np.zeros((len(layers), bev_hw[0], bev_hw[1]), dtype=np.float32)  # [S, H, W]
    for k, layer in enumerate(layers):
        if layer in nusc_map.non_geometric_line_layers:
            out[k] = _line_mask(nusc_map, layer, patch_box, angle_deg, bev_hw)
        else:
            out[k] = nusc_map.get_map_mask(patch_box, angle_deg, [layer], canvas_size=bev_hw)[0]
    return out


def _line_mask(nusc_map, layer: str, patch_box: tuple, angle_deg: float, hw: tuple[int, int]) -> np.ndarray:
    """The devkit's line rasterisation (2 px polylines) without its Shapely-2 trap.

    ``NuScenesMapExplorer.mask_for_lines`` iterates a ``MultiLineString`` directly, which Shapely 2
    forbids (a divider that leaves and re-enters the patch -> TypeError); here ``.geoms`` is used.
    """
    import cv2
    from shapely import affinity
    from shapely.geometry import box

    h_m, w_m = patch_box[2], patch_box[3]
    mask = np.zeros(hw, dtype=np.uint8)
    lines = nusc_map.explorer._get_layer_line(patch_box, angle_deg, layer) or []  # patch-local metres
    clip = box(-w_m / 2, -h_m / 2, w_m / 2, h_m / 2)
    to_px = [hw[1] / w_m, 0.0, 0.0, hw[0] / h_m, hw[1] / 2, hw[0] / 2]  # metres -> pixels (col, row)
    for line in lines:
        geom = line.intersection(clip)
        if geom.is_empty:
            continue
        geom = affinity.affine_transform(geom, to_px)
        for part in getattr(geom, "geoms", [geom]):
            if part.geom_type == "LineString" and not part.is_empty:
                cv2.polylines(mask, [np.asarray(part.coords, dtype=np.int32).reshape(-1, 2)], False, 1, 2)
    return mask
