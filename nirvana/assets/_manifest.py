"""Manifests: each built folder carries `manifest.json` recording where it came from and what it holds.

A folder counts as built only when its manifest exists, has the current recipe number, and every file it
lists is present with the recorded size (`deep=True` also re-hashes them). That makes a rebuild after an
interrupted or outdated build automatic, and a no-op rebuild fast.
"""

from __future__ import annotations

import hashlib
import json
from pathlib import Path

from ..atomic import write_json

MANIFEST = "manifest.json"


def sha256(path: Path, chunk: int = 1 << 20) -> str:
    h = hashlib.sha256()
    with open(path, "rb") as fh:
        while block := fh.read(chunk):
            h.update(block)
    return h.hexdigest()


def file_table(folder: Path) -> dict[str, dict]:
    """Size and sha256 of every file under `folder` except the manifest itself, by relative path."""
    folder = Path(folder)
    return {
        p.relative_to(folder).as_posix(): {"bytes": p.stat().st_size, "sha256": sha256(p)}
        for p in sorted(folder.rglob("*"))
        if p.is_file() and p.name != MANIFEST
    }


def write_manifest(folder: Path, step: str, recipe: int, **info) -> dict:
    manifest = {"step": step, "recipe": recipe, **info, "files": file_table(folder)}
    write_json(Path(folder) / MANIFEST, manifest)
    return manifest


def read_manifest(folder: Path) -> dict | None:
    try:
        return json.loads((Path(folder) / MANIFEST).read_text(encoding="utf-8"))
    except (OSError, ValueError):
        return None


def problem(folder: Path, step: str, recipe: int, deep: bool = False) -> str | None:
    """Why `folder` is not a valid build of `step` (None when it is)."""
    folder = Path(folder)
    if not folder.is_dir():
        return f"{folder} does not exist"
    manifest = read_manifest(folder)
    if manifest is None:
        return f"{folder / MANIFEST} is missing or unreadable"
    if manifest.get("step") != step or manifest.get("recipe") != recipe:
        return f"{folder} was built by another recipe ({manifest.get('step')} v{manifest.get('recipe')})"
    for rel, meta in manifest.get("files", {}).items():
        p = folder / rel
        if not p.is_file():
            return f"{p} is missing"
        if p.stat().st_size != meta["bytes"]:
            return f"{p} has {p.stat().st_size} bytes, the manifest says {meta['bytes']}"
        if deep and sha256(p) != meta["sha256"]:
            return f"{p} does not match its sha256 in the manifest"
    return None
