"""Fixed vocabularies of the synthetic dataset: nuScenes categories, attributes, visibilities, and
what each of the 10 detection classes looks like (sizes, speeds, colour, placement role).

Sizes are nuScenes-like means in metres, ordered (w, l, h) as nuScenes ``size``.
"""

from __future__ import annotations

import colorsys
from dataclasses import dataclass

#: The 23 nuScenes categories with their lidarseg ``index`` (written so the tables match the real ones).
CATEGORIES: tuple[tuple[str, int, str], ...] = (
    ("animal", 1, "All animals, e.g. cats, rats, dogs, deer, birds."),
    ("human.pedestrian.adult", 2, "Adult subclass."),
    ("human.pedestrian.child", 3, "Child subclass."),
    ("human.pedestrian.construction_worker", 4, "Construction worker."),
    ("human.pedestrian.personal_mobility", 5, "A small electric or self-propelled vehicle."),
    ("human.pedestrian.police_officer", 6, "Police officer."),
    ("human.pedestrian.stroller", 7, "Strollers."),
    ("human.pedestrian.wheelchair", 8, "Wheelchairs."),
    ("movable_object.barrier", 9, "Temporary road barrier placed in the scene."),
    ("movable_object.debris", 10, "Movable object that is left on the driveable surface."),
    ("movable_object.pushable_pullable", 11, "Objects that a pedestrian may push or pull."),
    ("movable_object.trafficcone", 12, "All types of traffic cone."),
    ("static_object.bicycle_rack", 13, "Area or device intended to park or secure the bicycles."),
    ("vehicle.bicycle", 14, "Human or electric powered 2-wheeled vehicle."),
    ("vehicle.bus.bendy", 15, "Bendy bus subclass."),
    ("vehicle.bus.rigid", 16, "Rigid bus subclass."),
    ("vehicle.car", 17, "Vehicle designed primarily for personal use."),
    ("vehicle.construction", 18, "Vehicles primarily designed for construction."),
    ("vehicle.emergency.ambulance", 19, "All types of ambulances."),
    ("vehicle.emergency.police", 20, "All types of police vehicles."),
    ("vehicle.motorcycle", 21, "Gasoline or electric powered 2-wheeled vehicle."),
    ("vehicle.trailer", 22, "Any vehicle trailer."),
    ("vehicle.truck", 23, "Vehicles primarily designed to haul cargo."),
)

ATTRIBUTES: tuple[tuple[str, str], ...] = (
    ("vehicle.moving", "Vehicle is moving."),
    ("vehicle.stopped", "Vehicle, with a driver/rider in/on it, is currently stationary."),
    (
        "vehicle.parked",
        "Vehicle is stationary (usually for longer duration) with no immediate intent to move.",
    ),
    ("cycle.with_rider", "There is a rider on the bicycle or motorcycle."),
    ("cycle.without_rider", "There is NO rider on the bicycle or motorcycle."),
    ("pedestrian.sitting_lying_down", "The human is sitting or lying down."),
    ("pedestrian.standing", "The human is standing."),
    ("pedestrian.moving", "The human is moving."),
)

#: (token, level, description): the real visibility tokens are the strings "1".."4".
VISIBILITIES: tuple[tuple[str, str, str], ...] = (
    ("1", "v0-40", "visibility of whole object is between 0 and 40%"),
    ("2", "v40-60", "visibility of whole object is between 40 and 60%"),
    ("3", "v60-80", "visibility of whole object is between 60 and 80%"),
    ("4", "v80-100", "visibility of whole object is between 80 and 100%"),
)


def visibility_token(fraction_visible: float) -> str:
    """Fraction of the object seen in the cameras (0..1) -> nuScenes visibility token."""
    if fraction_visible < 0.4:
        return "1"
    if fraction_visible < 0.6:
        return "2"
    if fraction_visible < 0.8:
        return "3"
    return "4"


@dataclass(frozen=True)
class ClassSpec:
    """How one detection class is generated.

    role: "vehicle" (drives in a lane, may park on the kerb strip), "cycle" (outer lane or parked),
    "pedestrian" (walks or stands on the sidewalk), "static" (cones/barriers along the kerb).
    """

    name: str  # detection class
    categories: tuple[tuple[str, float], ...]  # (nuScenes category, probability)
    size_wlh_m: tuple[float, float, float]
    speed_mps: tuple[float, float]  # range when moving
    p_static: float  # probability of parked / standing / stopped
    count: int  # objects per scene (before rejection of overlaps)
    role: str


CLASS_SPECS: tuple[ClassSpec, ...] = (
    ClassSpec("car", (("vehicle.car", 1.0),), (1.95, 4.6, 1.73), (4.0, 12.0), 0.45, 30, "vehicle"),
    ClassSpec("truck", (("vehicle.truck", 1.0),), (2.5, 6.9, 2.8), (4.0, 9.0), 0.4, 5, "vehicle"),
    ClassSpec(
        "construction_vehicle",
        (("vehicle.construction", 1.0),),
        (2.8, 6.4, 3.2),
        (1.0, 3.0),
        0.7,
        3,
        "vehicle",
    ),
    ClassSpec(
        "bus",
        (("vehicle.bus.rigid", 0.85), ("vehicle.bus.bendy", 0.15)),
        (2.95, 11.0, 3.5),
        (4.0, 9.0),
        0.3,
        3,
        "vehicle",
    ),
    ClassSpec("trailer", (("vehicle.trailer", 1.0),), (2.9, 12.0, 3.8), (3.0, 7.0), 0.8, 2, "vehicle"),
    ClassSpec("barrier", (("movable_object.barrier", 1.0),), (2.5, 0.5, 1.0), (0.0, 0.0), 1.0, 10, "static"),
    ClassSpec("motorcycle", (("vehicle.motorcycle", 1.0),), (0.77, 2.11, 1.47), (4.0, 11.0), 0.4, 4, "cycle"),
    ClassSpec("bicycle", (("vehicle.bicycle", 1.0),), (0.6, 1.7, 1.28), (2.0, 5.0), 0.4, 5, "cycle"),
    ClassSpec(
        "pedestrian",
        (
            ("human.pedestrian.adult", 0.8),
            ("human.pedestrian.child", 0.08),
            ("human.pedestrian.construction_worker", 0.08),
            ("human.pedestrian.police_officer", 0.04),
        ),
        (0.67, 0.73, 1.77),
        (0.8, 1.8),
        0.35,
        20,
        "pedestrian",
    ),
    ClassSpec(
        "traffic_cone",
        (("movable_object.trafficcone", 1.0),),
        (0.41, 0.41, 1.07),
        (0.0, 0.0),
        1.0,
        12,
        "static",
    ),
)
CLASS_SPEC_BY_NAME: dict[str, ClassSpec] = {s.name: s for s in CLASS_SPECS}


def _hue_colour(i: int, n: int) -> tuple[int, int, int]:
    r, g, b = colorsys.hsv_to_rgb(i / n, 0.85, 0.95)
    return (round(r * 255), round(g * 255), round(b * 255))


#: Per-class base colour (RGB, 0..255): 10 hues 36 deg apart, so a shaded face keeps its class hue.
CLASS_HUE_ORDER: tuple[str, ...] = (
    "car",
    "traffic_cone",
    "construction_vehicle",
    "bicycle",
    "barrier",
    "pedestrian",
    "truck",
    "bus",
    "motorcycle",
    "trailer",
)
CLASS_COLOURS: dict[str, tuple[int, int, int]] = {
    name: _hue_colour(i, len(CLASS_HUE_ORDER)) for i, name in enumerate(CLASS_HUE_ORDER)
}


def attribute_for(spec: ClassSpec, moving: bool, parked: bool) -> str:
    """The one nuScenes attribute consistent with class and motion ('' for cones and barriers)."""
    if spec.role == "vehicle":
        return "vehicle.moving" if moving else ("vehicle.parked" if parked else "vehicle.stopped")
    if spec.role == "cycle":
        return "cycle.with_rider" if (moving or not parked) else "cycle.without_rider"
    if spec.role == "pedestrian":
        return "pedestrian.moving" if moving else "pedestrian.standing"
    return ""
