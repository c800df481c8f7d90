"""Serving: runs in the serving environment (numpy, onnxruntime, tokenizers; no torch, no MLflow)."""
