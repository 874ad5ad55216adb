"""Small helpers shared across mmbert (no dependencies on the rest of the package)."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def atomic_write(path: str | os.PathLike, data: str | bytes | Callable[[str], None]) -> Path:
    """Write `path` so that readers see the old file or the complete new one, never a partial one:
    write a temp file in the same directory, then os.replace it into place (a crash leaves at most
    a hidden temp file, which is removed on error). `data` is text (UTF-8), bytes, or a function
    that writes the file at the temp path it is given (e.g. safetensors' save_file)."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=".tmp")
    try:
        if callable(data):
            os.close(fd)
            data(tmp)
        else:
            with os.fdopen(fd, "wb") as f:
                f.write(data.encode("utf-8") if isinstance(data, str) else data)
        os.replace(tmp, path)
    except BaseException:
        Path(tmp).unlink(missing_ok=True)
        raise
    return path
