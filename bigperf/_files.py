"""Writing a file so that readers see the old version or the new one, never a torn one."""

from __future__ import annotations

import os
import tempfile
from pathlib import Path
from typing import Callable


def user_file_mode() -> int:
    """The mode open() would give a new file under this process's umask (mkstemp gives 0600)."""
    mask = os.umask(0)
    os.umask(mask)
    return 0o666 & ~mask


def write_atomically(path: Path, write: Callable[[str], object]) -> None:
    """write(a temporary path in the same folder), give it the user's usual mode, then rename it
    over `path`: one atomic step. On any failure (Ctrl-C included) the temporary file is removed
    and `path` is as it was."""
    handle, temp = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.")
    os.close(handle)
    try:
        write(temp)
        os.chmod(temp, user_file_mode())
        os.replace(temp, path)
    finally:
        if os.path.exists(temp):
            os.remove(temp)
