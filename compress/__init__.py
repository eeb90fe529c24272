"""compress: PyTorch teacher -> distilled, pruned, int8 ONNX student, measured and verified."""
