"""Deployment without the training stack: ONNX models on onnxruntime (``nailseg[onnx]``), their
verification against the framework model, and the HTTP service (``nailseg serve``).

Nothing here imports torch or TensorFlow: a served or embedded model needs only onnxruntime,
numpy, OpenCV and Pillow.
"""
