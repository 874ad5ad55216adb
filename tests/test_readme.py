"""The README's two commands are real: CI runs exactly the test command, and both make targets exist
and do what the README says (the demo itself runs in tests/e2e/test_demo.py, slow)."""

import re
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[1]


def readme_commands() -> list[str]:
    block = re.search(r"## The two commands\s+```bash\n(.*?)```", (REPO / "README.md").read_text(), re.S)
    assert block, "README.md lost its 'The two commands' block"
    return [ln.split("#")[0].strip() for ln in block.group(1).splitlines() if ln.strip()]


def test_readme_gives_two_commands_and_ci_runs_the_test_one():
    cmds = readme_commands()
    assert cmds == ["make demo", "make test"]
    ci = [ln.strip() for ln in (REPO / ".ci" / "run").read_text().splitlines()
          if ln.strip() and not ln.lstrip().startswith("#")]
    assert "make test" in ci


def test_make_targets_set_up_then_run_what_the_readme_says():
    for target, expect in (("test", "pytest"), ("demo", "mmbert demo")):
        dry = subprocess.run(["make", "-n", "-B", target], cwd=REPO, capture_output=True, text=True, timeout=60)
        assert dry.returncode == 0, dry.stderr
        assert "pip install" in dry.stdout and "constraints.txt" in dry.stdout  # sets up first, torch pinned
        assert expect in dry.stdout
    assert "torch==2.13.0" in (REPO / "constraints.txt").read_text()
