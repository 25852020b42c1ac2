"""Model execution: ONNX Runtime sessions and the dynamic batcher."""
