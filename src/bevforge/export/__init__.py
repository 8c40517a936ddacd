"""Model export: ONNX via ``bevforge export CONFIG CKPT --onnx OUT.onnx``: BEVFormer in ``onnx_model.py``,
BEVDet in ``bevdet_onnx.py`` (one rig's BEV pooling plan baked in, or ``--dynamic-rig``); input sizes and
camera rigs for export and benchmarks in ``rig.py``."""
