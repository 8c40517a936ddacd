"""Model export: ONNX via ``bevforge export CONFIG CKPT --onnx OUT.onnx`` (see ``onnx_model.py``)."""
