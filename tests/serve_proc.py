"""Start `mmbert serve` as a real process on a free port and wait until /health answers: the one
start-up loop of the serve tests and `benchmarks/serve.py` (which imports it from tests/).

    proc, url = start_serve(["--model", str(model_dir), "--dtype", "fp32"], log_path)
"""

from __future__ import annotations

import os
import re
import subprocess
import sys
import time
from pathlib import Path

import httpx


def start_serve(args: list[str], log_path: Path, *, env: dict[str, str] | None = None,
                timeout: float = 120.0) -> tuple[subprocess.Popen, str]:
    """`python -m mmbert serve --port 0 ARGS`, stderr to `log_path` (uvicorn prints the bound URL there);
    returns (process, base URL) once /health is 200. RuntimeError with the log when the server exits or
    does not come up within `timeout` seconds (the process is killed then)."""
    proc = subprocess.Popen([sys.executable, "-m", "mmbert", "serve", "--port", "0", *args],
                            stdout=subprocess.DEVNULL, stderr=open(log_path, "w"), env=env or dict(os.environ))
    deadline = time.time() + timeout
    while time.time() < deadline:
        m = re.search(r"http://127\.0\.0\.1:(\d+)", Path(log_path).read_text())
        if m:
            url = f"http://127.0.0.1:{m.group(1)}"
            try:
                if httpx.get(url + "/health", timeout=2).status_code == 200:
                    return proc, url
            except httpx.TransportError:
                pass
        if proc.poll() is not None:
            raise RuntimeError(f"server exited with {proc.returncode}: {Path(log_path).read_text()}")
        time.sleep(0.2)
    proc.kill()
    raise RuntimeError(f"server did not come up in {timeout:.0f} s: {Path(log_path).read_text()}")
