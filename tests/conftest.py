import os
from pathlib import Path

import pytest
import torch

# fp32 oracle everywhere; deterministic CPU math for parity tests.
torch.set_default_dtype(torch.float32)

# dtype="auto" calibrates once per machine and caches the answer: keep that cache out of the
# user's home during tests (one folder per session; subprocesses inherit it).
if not os.environ.get("MMBERT_CACHE_DIR"):
    import tempfile

    os.environ["MMBERT_CACHE_DIR"] = tempfile.mkdtemp(prefix="mmbert-test-cache-")

REPO = Path(__file__).resolve().parents[1]


def eval_data_dir() -> Path | None:
    """The shared evaluation data (../shared/data/eval or $MMBERT_EVAL_DATA), or None if absent."""
    d = Path(os.environ.get("MMBERT_EVAL_DATA", REPO.parent / "shared" / "data" / "eval"))
    return d if d.is_dir() else None


@pytest.fixture
def eval_data():
    d = eval_data_dir()
    if d is None:
        pytest.skip("evaluation data directory absent (set MMBERT_EVAL_DATA or provide ../shared/data/eval)")
    return d
