"""Pieces of the synthetic generator: rig, ego path, overlap test, renderer, lidar."""

from __future__ import annotations

import math

import numpy as np
import pytest

from bevforge.data.synthetic import roads
from bevforge.data.synthetic.catalog import CLASS_COLOURS, CLASS_SPECS, attribute_for
from bevforge.data.synthetic.lidar import lidar_cloud
from bevforge.data.synthetic.render import Cuboids, GroundQuads, render_camera, sky_background
from bevforge.data.synthetic.rig import camera_calibs, lidar_calib
from bevforge.data.synthetic.world import ego_motion, rects_overlap


def test_synth_rig_looks_like_the_real_car():
    cams = {c.channel: c for c in camera_calibs((400, 225))}
    expected_yaw = {
        "CAM_FRONT": 0,
        "CAM_FRONT_RIGHT": -55,
        "CAM_FRONT_LEFT": 55,
        "CAM_BACK": 180,
        "CAM_BACK_LEFT": 110,
        "CAM_BACK_RIGHT": -110,
    }
    for name, yaw in expected_yaw.items():
        m = cams[name].sensor2ego()
        optical_axis = m[:3, :3] @ np.array([0.0, 0.0, 1.0])  # camera z in ego
        assert np.allclose(optical_axis, [math.cos(math.radians(yaw)), math.sin(math.radians(yaw)), 0.0])
        assert np.allclose(m[:3, :3] @ np.array([0.0, 1.0, 0.0]), [0.0, 0.0, -1.0])  # image down = ego down
        assert 1.4 < m[2, 3] < 1.7
        k = cams[name].intrinsics_array()
        assert k[0, 2] == 200.0 and k[1, 2] == 112.5 and k[0, 0] == k[1, 1]
    assert cams["CAM_FRONT"].intrinsics_array()[0, 0] == pytest.approx(0.791 * 400)
    assert cams["CAM_BACK"].intrinsics_array()[0, 0] < cams["CAM_FRONT"].intrinsics_array()[0, 0]  # wider
    lid = lidar_calib().sensor2ego()
    assert np.allclose(lid[:3, :3] @ np.array([1.0, 0.0, 0.0]), [0.0, -1.0, 0.0])  # like the real LIDAR_TOP


def test_synth_ego_drives_in_lane_with_turns():
    grid = roads.make_grid()
    nodes = np.array(grid.node_coords)
    turned = 0
    for seed in range(6):
        ego = ego_motion(grid, np.random.default_rng(seed), duration_s=12.0)
        st = ego.state(np.arange(0.0, 12.0, 0.1))
        xy, yaw = st["xy"], st["yaw_rad"]
        assert (xy > 0).all() and (xy < grid.extent_m).all()
        assert (st["speed_mps"] >= 1.5).all() and np.ptp(st["speed_mps"]) > 0.5  # speed changes
        step = np.linalg.norm(np.diff(xy, axis=0), axis=-1)
        assert np.allclose(step, 0.1 * st["speed_mps"][:-1], rtol=0.2, atol=0.05)
        # always on a road: within the road half width of a road centre line
        off = np.minimum(np.abs(xy[:, 0:1] - nodes).min(1), np.abs(xy[:, 1:2] - nodes).min(1))
        assert (off < roads.ROAD_HALF_WIDTH_M).all()
        turned += np.ptp(yaw) > math.pi / 4
        # the car slows down for turns: comfortable lateral acceleration, no 90-degree turn between key frames
        assert (st["speed_mps"] ** 2 * np.abs(st["curvature_per_m"])).max() <= 2.5 + 1e-6
        assert np.degrees(np.abs(yaw[5:] - yaw[:-5])).max() < 25.0  # per 0.5 s
    assert turned >= 1


def test_synth_rects_overlap():
    c = np.array([[0.0, 0.0]])
    half = np.array([2.0, 1.0])
    assert rects_overlap(c, np.array([0.0]), half, np.array([[3.9, 0.0]]), np.array([0.0]), half)[0]
    assert not rects_overlap(c, np.array([0.0]), half, np.array([[4.1, 0.0]]), np.array([0.0]), half)[0]
    # rotated 90 deg: its half length now lies along y
    assert not rects_overlap(c, np.array([0.0]), half, np.array([[3.1, 0.0]]), np.array([math.pi / 2]), half)[
        0
    ]
    assert rects_overlap(c, np.array([0.0]), half, np.array([[0.0, 2.9]]), np.array([math.pi / 2]), half)[0]


def test_synth_attributes_match_class_and_motion():
    spec = {s.name: s for s in CLASS_SPECS}
    assert attribute_for(spec["car"], moving=True, parked=False) == "vehicle.moving"
    assert attribute_for(spec["truck"], moving=False, parked=True) == "vehicle.parked"
    assert attribute_for(spec["bus"], moving=False, parked=False) == "vehicle.stopped"
    assert attribute_for(spec["bicycle"], moving=False, parked=True) == "cycle.without_rider"
    assert attribute_for(spec["motorcycle"], moving=True, parked=False) == "cycle.with_rider"
    assert attribute_for(spec["pedestrian"], moving=False, parked=False) == "pedestrian.standing"
    assert attribute_for(spec["traffic_cone"], moving=False, parked=False) == ""
    assert attribute_for(spec["barrier"], moving=False, parked=False) == ""


def _one_box_scene():
    ground = GroundQuads(
        verts_global_m=np.array(
            [[[-100.0, -100.0, 0.0], [100.0, -100.0, 0.0], [100.0, 100.0, 0.0], [-100.0, 100.0, 0.0]]]
        ),
        colours=np.array([[90, 90, 90]], dtype=np.uint8),
        is_marking=np.array([False]),
    )
    near_car = np.array([10.0, 0.0, 0.8])
    far_truck = np.array([20.0, 0.5, 1.4])
    boxes = Cuboids(
        centres_m=np.stack([far_truck, near_car]),
        size_wlh_m=np.array([[2.5, 7.0, 2.8], [2.0, 4.5, 1.6]]),
        yaw_rad=np.array([0.0, 0.3]),
        colours=np.array([CLASS_COLOURS["truck"], CLASS_COLOURS["car"]], dtype=np.float64),
    )
    return ground, boxes


def test_synth_render_projects_and_occludes():
    ground, boxes = _one_box_scene()
    cam = camera_calibs((160, 90))[0]  # CAM_FRONT
    cam2global = cam.sensor2ego()  # ego at the origin
    k = cam.intrinsics_array()
    img, vis, sil = render_camera(ground, boxes, k, cam2global, 160, 90, sky_background(160, 90, 45.0))
    assert img.shape == (90, 160, 3) and img.dtype == np.uint8
    global2cam = np.linalg.inv(cam2global)
    centre_cam = global2cam[:3, :3] @ boxes.centres_m[1] + global2cam[:3, 3]
    u, v = (k @ centre_cam)[:2] / centre_cam[2]
    pixel = img[int(round(v)), int(round(u))].astype(float)
    car = np.array(CLASS_COLOURS["car"], dtype=float)
    assert np.allclose(pixel / pixel.max(), car / car.max(), atol=0.05)  # shaded car colour
    assert (img[2, 80] > img[2, 80].min()).any() and img[2, 80, 2] > 200  # sky above
    assert vis[1] == pytest.approx(sil[1], rel=0.15)  # the near car is fully visible
    assert 0 < vis[0] < sil[0]  # the truck behind it is partly hidden


def test_synth_lidar_points_fall_in_their_boxes():
    _, boxes = _one_box_scene()
    lidar2global = lidar_calib().sensor2ego()
    cloud, num_pts = lidar_cloud(boxes, lidar2global, np.random.default_rng(0))
    assert cloud.dtype == np.float32 and cloud.shape[1] == 5
    assert (num_pts >= 1).all()
    ground = cloud[np.abs(cloud[:, 2] + lidar2global[2, 3]) < 1e-3]  # ground points sit at z = -1.84
    assert len(ground) > 1000
    assert cloud[:, 4].max() < 32 and (cloud[:, 4] >= 0).all()  # ring index
