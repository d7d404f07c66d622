"""The Inspect panel: per-layer quantization error of an INT8 model (`panel`)."""
