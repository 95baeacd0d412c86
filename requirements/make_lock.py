"""Write requirements/lock.txt: the exact versions `make demo` / `make test` install.

    python requirements/make_lock.py          (what `make lock` runs, before the tests)

pip alone: `pip install --dry-run --ignore-installed --report` resolves the project's
ranges (pyproject.toml, with the test extra) plus the build tools and torch into a
complete, transitive set without installing anything, and this script writes that set
pinned. The lock is what CI and a fresh clone install, so a new release upstream cannot
turn main red; re-locking is a deliberate step that then has to pass the tests.
"""
from __future__ import annotations

import json
import platform
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
LOCK = ROOT / "requirements" / "lock.txt"
# Installed beside the project: the build runs without isolation from these (setup.py
# imports pybind11), so the build tools are locked too.
BUILD_TOOLS = ["pip", "setuptools>=77", "wheel", "pybind11>=2.12"]


def resolve(torch_spec: str) -> dict[str, str]:
    """{name: version} of everything pip would install into an empty environment."""
    cmd = [sys.executable, "-m", "pip", "install", "--dry-run", "--ignore-installed", "--quiet",
           "--report", "-", f"{ROOT}[test]", *BUILD_TOOLS, *torch_spec.split()]
    done = subprocess.run(cmd, capture_output=True, text=True, check=True)
    report = json.loads(done.stdout)
    pins = {}
    for item in report["install"]:
        name, version = item["metadata"]["name"], item["metadata"]["version"]
        if name.lower() == "bigperf":
            continue
        # A local label (+cpu) names one index's build; the plain version lets pip take the
        # build it finds (the CPU wheel on this project's machines).
        pins[name] = version.split("+")[0]
    return pins


def main() -> None:
    torch_spec = sys.argv[1] if len(sys.argv) > 1 else "torch==2.13.0"
    pins = resolve(torch_spec)
    header = [
        "# Exact versions for `make demo` / `make test` (pip install -r), written by",
        "# requirements/make_lock.py (`make lock`); pyproject.toml keeps the ranges for library users.",
        f"# Resolved for CPython {platform.python_version()} on {platform.system()} {platform.machine()};"
        " on another platform run `make lock`.",
    ]
    lines = [f"{name}=={version}" for name, version in sorted(pins.items(), key=lambda kv: kv[0].lower())]
    LOCK.write_text("\n".join(header + lines) + "\n")
    transformers = pins.get("transformers", "absent")
    print(f"make_lock: wrote {LOCK.relative_to(ROOT)} ({len(lines)} packages; transformers {transformers})")


if __name__ == "__main__":
    main()
