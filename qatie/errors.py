"""Errors a user can act on. Every message names the file or value at fault."""


class QatieError(Exception):
    """Base class: anything raised on purpose by qatie (bad input, wrong file, bad option)."""


class ImageReadError(QatieError):
    """A file could not be read as an image (missing, empty, corrupt, not an image)."""


class CheckpointError(QatieError):
    """A checkpoint is missing, corrupt, not a qatie checkpoint, or does not fit the model."""


class ModelFileError(QatieError):
    """An ONNX model file is missing, truncated, corrupt or not a qatie model."""
