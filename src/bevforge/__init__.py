"""bevforge: camera-only bird's-eye-view 3D perception, trainable on one GPU, one node or many."""

__version__ = "0.1.0"
