"""Detectors: onnxruntime sessions and the adapters that turn model outputs into `Detections`."""
