"""CAN bus expansion files ``can_bus/<scene>_<message>.json`` in the real nuScenes layout.

Messages follow the real key sets (keys in alphabetical order, like the released files, because
BEVFormer reads the pose's remaining keys in file order: accel, rotation_rate, vel). Values come from
the same ego motion as the ego_pose table: ``pos``/``orientation`` global, ``vel``/``accel``/
``rotation_rate`` in the ego frame (accel includes gravity on z, as a real IMU measures).
"""

from __future__ import annotations

import json
import math
from pathlib import Path

import numpy as np

from bevforge.data.synthetic.world import CAN_PAD_S, EgoMotion

GRAVITY_MPS2 = 9.81
WHEELBASE_M = 2.59
STEERING_RATIO = 15.0
POSE_HZ, IMU_HZ, MONITOR_HZ = 50, 100, 2
_CAN_MARGIN_S = CAN_PAD_S - 0.5  # CAN covers the key frames with this margin on both ends


def _times(hz: float, duration_s: float) -> np.ndarray:
    return np.arange(-_CAN_MARGIN_S, duration_s + _CAN_MARGIN_S, 1.0 / hz)


def _motion(ego: EgoMotion, t: np.ndarray) -> dict[str, np.ndarray]:
    st = ego.state(t)
    v, curv, yaw = st["speed_mps"], st["curvature_per_m"], st["yaw_rad"]
    yaw_rate = v * curv
    accel = np.stack([st["accel_mps2"], v * yaw_rate, np.full_like(v, GRAVITY_MPS2)], -1)  # [T, 3] ego frame
    rot_rate = np.stack([np.zeros_like(v), np.zeros_like(v), yaw_rate], -1)
    quat = np.stack([np.cos(yaw / 2), 0 * yaw, 0 * yaw, np.sin(yaw / 2)], -1)  # [T, 4] wxyz
    pos = np.concatenate([st["xy"], np.zeros((len(t), 1))], -1)
    vel = np.stack([v, 0 * v, 0 * v], -1)
    steer = STEERING_RATIO * np.arctan(WHEELBASE_M * curv)
    return {
        "accel": accel,
        "rot_rate": rot_rate,
        "quat": quat,
        "pos": pos,
        "vel": vel,
        "steer": steer,
        "v": v,
    }


def _r(x: np.ndarray) -> list:
    return np.round(x, 6).tolist()


def write_can_bus(can_dir: Path, scene_name: str, ego: EgoMotion, start_us: int, duration_s: float) -> None:
    """Write pose, ms_imu, steeranglefeedback, vehicle_monitor, zoe_veh_info, zoesensors, route, meta."""
    can_dir.mkdir(parents=True, exist_ok=True)

    def utime(t: np.ndarray) -> list[int]:
        return [int(start_us + round(x * 1e6)) for x in t]

    files: dict[str, object] = {}
    t = _times(POSE_HZ, duration_s)
    mo = _motion(ego, t)
    files["pose"] = [
        {"accel": a, "orientation": q, "pos": p, "rotation_rate": r, "utime": u, "vel": v}
        for a, q, p, r, u, v in zip(
            _r(mo["accel"]), _r(mo["quat"]), _r(mo["pos"]), _r(mo["rot_rate"]), utime(t), _r(mo["vel"])
        )
    ]
    t = _times(IMU_HZ, duration_s)
    mo = _motion(ego, t)
    us = utime(t)
    files["ms_imu"] = [
        {"linear_accel": a, "q": q, "rotation_rate": r, "utime": u}
        for a, q, r, u in zip(_r(mo["accel"]), _r(mo["quat"]), _r(mo["rot_rate"]), us)
    ]
    files["steeranglefeedback"] = [{"utime": u, "value": s} for u, s in zip(us, _r(mo["steer"]))]
    wheel_rpm = mo["v"] / (2 * math.pi * 0.3) * 60.0
    odom = np.concatenate([[0.0], np.cumsum(mo["v"][1:] / IMU_HZ)])
    files["zoe_veh_info"] = [
        {
            "FL_wheel_speed": w,
            "FR_wheel_speed": w,
            "RL_wheel_speed": w,
            "RR_wheel_speed": w,
            "left_solar": 0.0,
            "longitudinal_accel": a[0],
            "meanEffTorque": 0,
            "odom": o,
            "odom_speed": v,
            "pedal_cc": 0,
            "regen": 0,
            "requestedTorqueAfterProc": 0,
            "right_solar": 0.0,
            "steer_corrected": s,
            "steer_offset_can": 0.0,
            "steer_raw": s,
            "transversal_accel": a[1],
            "utime": u,
        }
        for w, a, o, v, s, u in zip(
            _r(wheel_rpm), _r(mo["accel"]), _r(odom), _r(mo["v"] * 3.6), _r(mo["steer"]), us
        )
    ]
    files["zoesensors"] = [
        {"brake_sensor": 0.0, "steering_sensor": s, "throttle_sensor": 0.0, "utime": u}
        for s, u in zip(_r(mo["steer"]), us)
    ]
    t = _times(MONITOR_HZ, duration_s)
    mo = _motion(ego, t)
    files["vehicle_monitor"] = [
        {
            "available_distance": 100,
            "battery_level": 80,
            "brake": 0,
            "brake_switch": 1,
            "gear_position": 7,
            "left_signal": 0,
            "rear_left_rpm": rpm,
            "rear_right_rpm": rpm,
            "right_signal": 0,
            "steering": s,
            "steering_speed": 0,
            "throttle": 0,
            "utime": u,
            "vehicle_speed": v,
            "yaw_rate": yr,
        }
        for rpm, s, u, v, yr in zip(
            _r(mo["v"] / (2 * math.pi * 0.3) * 60.0),
            _r(mo["steer"]),
            utime(t),
            _r(mo["v"] * 3.6),
            _r(np.degrees(mo["rot_rate"][:, 2])),
        )
    ]
    route_s = np.arange(0.0, ego.path.length_m, 5.0)
    files["route"] = _r(ego.path.at(route_s)[0])
    files["meta"] = {"scene": scene_name, "source": "bevforge synthetic", "wheelbase_m": WHEELBASE_M}
    for msg, obj in files.items():
        (can_dir / f"{scene_name}_{msg}.json").write_text(json.dumps(obj))
