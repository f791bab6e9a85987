"""`confined_path`: the one way a route turns a client-given file path into a path it may read.

A route that takes a file path (adapter loading, admin routes) reads only below the configured
directory `file_root`. The client's path is taken relative to that directory; absolute paths are
refused, and the path is resolved (`..`, symlinks, every component) before the check, so neither
`../../etc/passwd` nor a symlink inside the root that points outside it gets through. Refusals are
403 (400 for a value that is no path at all) and nothing is read: the check touches no file content.
`resolved_below` is the check itself, for callers that accept absolute paths inside their directory
(the LoRA routes' `lora_dir`).
"""
from __future__ import annotations

from pathlib import Path, PurePosixPath

from jackfield.server.errors import APIError


def resolved_below(root: str | Path, given: str | Path) -> Path | None:
    """`given` (relative to `root`, or absolute) resolved, symlinks included; None unless it lies
    below `root`. Nothing is opened or read."""
    base = Path(root).expanduser().resolve()
    target = (base / Path(given).expanduser()).resolve()
    return target if target == base or base in target.parents else None


def confined_path(root: str | None, path: object, param: str = "path") -> Path:
    """The resolved path of `path` below `root`; raises APIError unless it stays inside."""
    if not isinstance(path, str) or not path or "\x00" in path:
        raise APIError(400, f"{param} must be a non-empty relative path", param=param)
    if root is None:
        raise APIError(403, f"{param}: this server reads no files from client-given paths; start it with "
                            "--file-root DIR to allow paths below DIR", param=param, code="file_access_denied")
    rel = PurePosixPath(path)
    if rel.is_absolute() or Path(path).is_absolute():
        raise APIError(403, f"{param}: absolute paths are not accepted; give a path relative to the file root",
                       param=param, code="file_access_denied")
    target = resolved_below(root, rel)
    if target is None:
        raise APIError(403, f"{param}: '{path}' leads outside the file root", param=param, code="file_access_denied")
    return target
