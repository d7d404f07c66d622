"""Stage 3, training: the FP32 (and QAT fine-tuning) loop (`loop`) and its losses."""
