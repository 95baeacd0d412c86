"""docs/ARCHITECTURE.md stays current, and nothing cites the team-internal design page.

- No tracked file may cite the design page that is not shipped in the repo (the project's
  own account is docs/ARCHITECTURE.md).
- Every repo path that docs/ARCHITECTURE.md names in inline backticks must exist. A span
  counts as a repo path when it is one word of path characters containing '/', not starting
  with '/', and it ends in .py/.h/.cpp/.cu/.md/.sh, or ends in '/', or starts with a
  top-level entry of the repo (a folder or extensionless file such as `tests/gpu`).
  Globs (`kernels/*_matmul.py`) must match at least one file. Fenced code blocks are not
  scanned; placeholders such as `bigperf/ops/<op>.py` are not paths.
"""

from __future__ import annotations

import re
import shutil
import subprocess
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parent.parent
ARCHITECTURE = ROOT / "docs" / "ARCHITECTURE.md"
# Spelled in two parts so that this file does not cite it itself.
FORBIDDEN = ("DESIGN" + ".md").encode()
PATH_EXTENSIONS = (".py", ".h", ".cpp", ".cu", ".md", ".sh")
_PATH_SPAN = re.compile(r"^[A-Za-z0-9_.*/-]+$")
_FENCE = re.compile(r"^```.*?^```", re.MULTILINE | re.DOTALL)
_INLINE = re.compile(r"`([^`\n]+)`")


def tracked_files() -> list[Path]:
    if shutil.which("git") is None:
        pytest.skip("git is not installed: cannot list the tracked files")
    result = subprocess.run(["git", "ls-files", "-z"], cwd=ROOT, capture_output=True)
    if result.returncode != 0:
        pytest.skip(f"not a git checkout ({result.stderr.decode(errors='replace').strip()})")
    return [ROOT / name for name in result.stdout.decode().split("\0") if name]


def test_no_tracked_file_cites_the_internal_design_page():
    files = tracked_files() + [ARCHITECTURE]
    citing = sorted({str(p.relative_to(ROOT)) for p in files
                     if p.is_file() and not p.is_symlink() and FORBIDDEN in p.read_bytes()})
    assert not citing, (f"these files cite {FORBIDDEN.decode()}, which is not in the repo; "
                        f"point them at docs/ARCHITECTURE.md: {citing}")


def _top_level_names() -> set[str]:
    return {p.name for p in ROOT.iterdir()}


def paths_named(text: str) -> list[str]:
    """The inline-backtick spans of `text` that look like repo paths (see the module doc)."""
    top = _top_level_names()
    found = []
    for span in _INLINE.findall(_FENCE.sub("", text)):
        span = span.strip()
        if "/" not in span or span.startswith("/") or not _PATH_SPAN.match(span):
            continue
        if span.endswith(PATH_EXTENSIONS) or span.endswith("/") or span.split("/")[0] in top:
            found.append(span)
    return found


def test_paths_rule():
    spans = paths_named("`bigperf/ops/` `kernels/*_matmul.py` `tests/gpu` `N/bn` `K/8` "
                        "`bigperf/ops/<op>.py` `/sys/x` `a b/c.py` `x.y` `csrc/cuda/x.cu`\n"
                        "```\n`nope/in_fence.py`\n```\n")
    assert spans == ["bigperf/ops/", "kernels/*_matmul.py", "tests/gpu", "csrc/cuda/x.cu"]


def test_architecture_paths_exist():
    assert ARCHITECTURE.is_file(), "docs/ARCHITECTURE.md is missing"
    spans = paths_named(ARCHITECTURE.read_text(encoding="utf-8"))
    assert len(spans) > 20, f"expected the document to name many repo paths, found {spans}"
    missing = []
    for span in spans:
        if "*" in span:
            if not any(ROOT.glob(span)):
                missing.append(span)
        elif span.endswith("/"):
            if not (ROOT / span).is_dir():
                missing.append(span)
        elif not (ROOT / span).exists():
            missing.append(span)
    assert not missing, f"docs/ARCHITECTURE.md names paths that do not exist: {missing}"
