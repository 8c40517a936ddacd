"""Synthetic nuScenes-format dataset generator (tables, rendered cameras, lidar, map, CAN bus).

``generate(out_dir, num_scenes=10, samples_per_scene=20, seed=0, image_wh=(400, 225),
version="v1.0-mini") -> Path`` writes a dataset that ``nuscenes-devkit`` loads unchanged.
"""

from bevforge.data.synthetic.generate import generate, scene_names

__all__ = ["generate", "scene_names"]
