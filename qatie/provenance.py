"""Which command produced an artefact: recorded in checkpoints, sidecars and ONNX metadata, so
`checkpoints/manifest.json` can say exactly how each shipped file was made."""
from __future__ import annotations

import shlex

_command: str | None = None


def record_command(argv: list[str]) -> None:
    """Called by the CLI with its arguments."""
    global _command
    _command = shlex.join(["qatie", *argv])


def current_command() -> str | None:
    """The `qatie …` command line running now, or None when called from Python."""
    return _command
