"""Generate one scene: world, rendered cameras, lidar clouds, CAN bus, and its table rows.

Runs in a worker process; everything it needs is in :class:`SceneJob`, and the rows it returns are
plain JSON-ready dicts. Randomness comes only from ``numpy.random.default_rng([seed, index])``.
"""

from __future__ import annotations

import math
from dataclasses import dataclass
from pathlib import Path

import numpy as np
import simplejpeg

from bevforge.data.synthetic import roads
from bevforge.data.synthetic.canbus import write_can_bus
from bevforge.data.synthetic.catalog import CLASS_COLOURS, visibility_token
from bevforge.data.synthetic.ground import build_ground
from bevforge.data.synthetic.lidar import POINTS_RANGE_M, lidar_cloud
from bevforge.data.synthetic.render import Cuboids, render_camera, sky_background
from bevforge.data.synthetic.rig import SensorCalib, all_calibs
from bevforge.data.synthetic.tokens import shared_token, token
from bevforge.data.synthetic.world import KEYFRAME_DT_S, ego_motion, place_objects
from bevforge.geometry.transforms import pose_matrix

ANNOTATION_RANGE_M = 60.0
RENDER_RANGE_M = 150.0
JPEG_QUALITY = 92


@dataclass(frozen=True)
class SceneJob:
    seed: int
    index: int
    name: str
    out_dir: str
    num_samples: int
    image_wh: tuple[int, int]
    start_us: int
    location: str
    logfile: str
    date_captured: str
    grid: roads.RoadGrid


def yaw_quat(yaw_rad: float) -> list[float]:
    return [math.cos(yaw_rad / 2), 0.0, 0.0, math.sin(yaw_rad / 2)]


def _calib_rows(job: SceneJob, calibs: list[SensorCalib]) -> list[dict]:
    return [
        {
            "token": token(job.seed, "calibrated_sensor", job.index, c.channel),
            "sensor_token": shared_token("sensor", c.channel),
            "translation": list(c.translation_m),
            "rotation": list(c.rotation_wxyz),
            "camera_intrinsic": [list(r) for r in c.intrinsics] if c.intrinsics is not None else [],
        }
        for c in calibs
    ]


def generate_scene(job: SceneJob) -> dict[str, list[dict]]:
    """Write the scene's sensor files and CAN bus; return its rows per table."""
    rng = np.random.default_rng([job.seed, job.index])
    w, h = job.image_wh
    n = job.num_samples
    duration = (n - 1) * KEYFRAME_DT_S
    ego = ego_motion(job.grid, rng, duration)
    objects = place_objects(job.grid, ego, n, rng)
    t_keys = np.arange(n) * KEYFRAME_DT_S
    es = ego.state(t_keys)
    ground = build_ground(job.grid, es["xy"].mean(0), RENDER_RANGE_M + float(np.ptp(es["xy"], 0).max()) / 2)
    calibs = all_calibs(job.image_wh)
    sky = sky_background(w, h, h / 2.0)
    out = Path(job.out_dir)
    for c in calibs:
        (out / "samples" / c.channel).mkdir(parents=True, exist_ok=True)
    colours = np.array([CLASS_COLOURS[c] for c in objects.class_names], dtype=np.float64).reshape(-1, 3)
    m = len(objects)

    rows: dict[str, list[dict]] = {k: [] for k in ("sample", "sample_data", "ego_pose", "sample_annotation")}
    rows["calibrated_sensor"] = _calib_rows(job, calibs)
    ann_by_obj: dict[int, list[dict]] = {}
    dist_all = (
        np.stack(
            [
                np.linalg.norm(objects.centres_at(t)[:, :2] - es["xy"][k][None], axis=-1)
                for k, t in enumerate(t_keys)
            ]
        )
        if m
        else np.zeros((n, 0))
    )  # [n, M]
    in_range = dist_all <= ANNOTATION_RANGE_M
    for k in range(n):
        ts = job.start_us + int(round(t_keys[k] * 1e6))
        sample_tok = token(job.seed, "sample", job.index, k)
        ego_xyz = np.array([es["xy"][k][0], es["xy"][k][1], 0.0])
        ego_rot = yaw_quat(float(es["yaw_rad"][k]))
        ego2global = pose_matrix(ego_xyz, ego_rot)
        centres = objects.centres_at(float(t_keys[k]))
        near = np.nonzero(dist_all[k] <= RENDER_RANGE_M)[0]
        boxes = Cuboids(centres[near], objects.size_wlh_m[near], objects.yaw_rad[near], colours[near])
        vis_px = np.zeros(m)
        sil_px = np.zeros(m)
        num_pts = np.zeros(m, dtype=np.int64)
        for c in calibs:
            sd_tok = token(job.seed, "sample_data", job.index, k, c.channel)
            ep_tok = token(job.seed, "ego_pose", job.index, k, c.channel)
            sensor2global = ego2global @ c.sensor2ego()
            if c.modality == "camera":
                fname = f"samples/{c.channel}/{job.logfile}__{c.channel}__{ts}.jpg"
                img, vis, sil = render_camera(ground, boxes, c.intrinsics_array(), sensor2global, w, h, sky)
                vis_px[near] += vis
                sil_px[near] += sil
                (out / fname).write_bytes(
                    simplejpeg.encode_jpeg(
                        img, quality=JPEG_QUALITY, colorspace="RGB", colorsubsampling="444"
                    )
                )
            else:
                fname = f"samples/{c.channel}/{job.logfile}__{c.channel}__{ts}.pcd.bin"
                cloud, pts = lidar_cloud(boxes, sensor2global, rng)
                num_pts[near] = pts
                (out / fname).write_bytes(cloud.tobytes())
            rows["ego_pose"].append(
                {"token": ep_tok, "timestamp": ts, "rotation": ego_rot, "translation": ego_xyz.tolist()}
            )
            rows["sample_data"].append(
                {
                    "token": sd_tok,
                    "sample_token": sample_tok,
                    "ego_pose_token": ep_tok,
                    "calibrated_sensor_token": token(job.seed, "calibrated_sensor", job.index, c.channel),
                    "timestamp": ts,
                    "fileformat": "jpg" if c.modality == "camera" else "pcd",
                    "is_key_frame": True,
                    "height": h if c.modality == "camera" else 0,
                    "width": w if c.modality == "camera" else 0,
                    "filename": fname,
                    "prev": token(job.seed, "sample_data", job.index, k - 1, c.channel) if k > 0 else "",
                    "next": token(job.seed, "sample_data", job.index, k + 1, c.channel) if k < n - 1 else "",
                }
            )
        rows["sample"].append(
            {
                "token": sample_tok,
                "timestamp": ts,
                "prev": token(job.seed, "sample", job.index, k - 1) if k > 0 else "",
                "next": token(job.seed, "sample", job.index, k + 1) if k < n - 1 else "",
                "scene_token": token(job.seed, "scene", job.index),
            }
        )
        for i in range(m):
            if not in_range[:, i].any():
                continue
            first, last = np.nonzero(in_range[:, i])[0][[0, -1]]
            if not first <= k <= last:
                continue  # annotated over one contiguous span of key frames
            if dist_all[k, i] <= POINTS_RANGE_M:
                assert num_pts[i] >= 1, (job.name, k, i)
            vis = vis_px[i] / sil_px[i] if sil_px[i] >= 1.0 else 0.0
            attr = objects.attributes[i]
            ann = {
                "token": token(job.seed, "sample_annotation", job.index, i, k),
                "sample_token": sample_tok,
                "instance_token": token(job.seed, "instance", job.index, i),
                "visibility_token": visibility_token(min(vis, 1.0)),
                "attribute_tokens": [shared_token("attribute", attr)] if attr else [],
                "translation": centres[i].tolist(),
                "size": objects.size_wlh_m[i].tolist(),
                "rotation": yaw_quat(float(objects.yaw_rad[i])),
                "prev": token(job.seed, "sample_annotation", job.index, i, k - 1) if k > first else "",
                "next": token(job.seed, "sample_annotation", job.index, i, k + 1) if k < last else "",
                "num_lidar_pts": int(num_pts[i]),
                "num_radar_pts": 0,
            }
            rows["sample_annotation"].append(ann)
            ann_by_obj.setdefault(i, []).append(ann)

    rows["instance"] = [
        {
            "token": token(job.seed, "instance", job.index, i),
            "category_token": shared_token("category", objects.categories[i]),
            "nbr_annotations": len(anns),
            "first_annotation_token": anns[0]["token"],
            "last_annotation_token": anns[-1]["token"],
        }
        for i, anns in sorted(ann_by_obj.items())
    ]
    log_tok = token(job.seed, "log", job.index)
    rows["log"] = [
        {
            "token": log_tok,
            "logfile": job.logfile,
            "vehicle": job.logfile.split("-")[0],
            "date_captured": job.date_captured,
            "location": job.location,
        }
    ]
    rows["scene"] = [
        {
            "token": token(job.seed, "scene", job.index),
            "log_token": log_tok,
            "nbr_samples": n,
            "first_sample_token": rows["sample"][0]["token"],
            "last_sample_token": rows["sample"][-1]["token"],
            "name": job.name,
            "description": f"synthetic drive, {len(ann_by_obj)} annotated objects, seed {job.seed}",
        }
    ]
    write_can_bus(out / "can_bus", job.name, ego, job.start_us, duration)
    return rows
