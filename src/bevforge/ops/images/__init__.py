"""bevforge.ops.images: the image tail of the data pipeline as a Triton kernel (data/device_images.py)."""
