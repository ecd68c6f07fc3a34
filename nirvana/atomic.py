"""Files: atomic writes — a reader (or a crashed process) never sees a half-written file or folder — and the
one JSONL reader.

Every file a run writes goes through here: asset builds, checkpoints, plans, score caches, result rows,
summaries, calibration ids.

Everything is first written into a temporary sibling of its destination -- same parent, hence same
filesystem, so the final `os.replace` is a single atomic rename -- and removed again if anything fails.
"""

from __future__ import annotations

import contextlib
import json
import os
import shutil
import tempfile
import warnings
from collections.abc import Iterable, Iterator
from pathlib import Path

# Temporary siblings start with this prefix, so a stale one (from a killed process) is recognisable.
TMP_PREFIX = ".tmp-"


def _umask() -> int:
    mask = os.umask(0)
    os.umask(mask)
    return mask


def _default_mode(path: Path, is_dir: bool) -> None:
    # mkdtemp/mkstemp create private (0700/0600) entries; give the result the permissions a plain
    # mkdir/open would have, so a cache shared by a lab (NIRVANA_CACHE) stays readable to others.
    os.chmod(path, (0o777 if is_dir else 0o666) & ~_umask())


def _fsync_dir(folder: Path) -> None:
    fd = os.open(folder, os.O_RDONLY)
    try:
        os.fsync(fd)
    finally:
        os.close(fd)


def _remove(path: Path) -> None:
    if path.is_dir() and not path.is_symlink():
        shutil.rmtree(path, ignore_errors=True)
    else:
        with contextlib.suppress(FileNotFoundError):
            path.unlink()


@contextlib.contextmanager
def atomic_dir(final: Path) -> Iterator[Path]:
    """Yield an empty temporary folder; on success it replaces `final` in one rename, on error it vanishes.

    An existing `final` (e.g. an invalid earlier build) is swapped out only after the new folder is complete,
    so an interrupted rebuild leaves the old one (or nothing), never a mixture.
    """
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}-", dir=final.parent))
    try:
        _default_mode(tmp, is_dir=True)
        yield tmp
        if final.exists():
            # os.replace cannot overwrite a non-empty folder: move the old one aside first.
            trash = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}{final.name}-old-", dir=final.parent))
            os.replace(final, trash / final.name)
            os.replace(tmp, final)
            _remove(trash)
        else:
            os.replace(tmp, final)
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_file(final: Path, mode: str = "w", **open_kwargs) -> Iterator:
    """Open a temporary sibling of `final` for writing; it becomes `final` only when the block succeeds."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{final.name}-", dir=final.parent)
    tmp = Path(name)
    try:
        _default_mode(tmp, is_dir=False)
        if "b" not in mode:
            open_kwargs.setdefault("encoding", "utf-8")
        with os.fdopen(fd, mode, **open_kwargs) as fh:
            yield fh
            fh.flush()
            os.fsync(fh.fileno())
        os.replace(tmp, final)
        _fsync_dir(final.parent)  # make the rename itself durable
    except BaseException:
        _remove(tmp)
        raise


@contextlib.contextmanager
def atomic_path(final: Path) -> Iterator[Path]:
    """A temporary sibling path for writers that take a file name (safetensors, torch.save); it becomes `final`
    only when the block succeeds, and is removed when it fails."""
    final = Path(final)
    final.parent.mkdir(parents=True, exist_ok=True)
    fd, name = tempfile.mkstemp(prefix=f"{TMP_PREFIX}{final.name}-", dir=final.parent)
    os.close(fd)
    tmp = Path(name)
    try:
        yield tmp
        _default_mode(tmp, is_dir=False)
        os.replace(tmp, final)
        _fsync_dir(final.parent)
    except BaseException:
        _remove(tmp)
        raise


def write_json(path: Path, obj) -> None:
    with atomic_file(path) as fh:
        json.dump(obj, fh, indent=2, sort_keys=True)
        fh.write("\n")


def write_jsonl(path: Path, rows: Iterable[dict]) -> int:
    """Write one JSON object per line (UTF-8, non-ASCII kept readable); return the number of rows."""
    n = 0
    with atomic_file(path) as fh:
        for row in rows:
            fh.write(json.dumps(row, ensure_ascii=False) + "\n")
            n += 1
    return n


def append_jsonl_line(path: str | os.PathLike, obj: dict) -> None:
    """Append one JSON object as one line, with a single write() to a file opened O_APPEND: on a local filesystem
    lines of concurrent writers never interleave, and a writer killed mid-line leaves a torn tail that
    `iter_jsonl(strict=False)` skips. For small records that many processes add to (not for row batches, which
    must land all or nothing: nirvana.results.append_rows)."""
    line = (json.dumps(obj, ensure_ascii=False, sort_keys=True) + "\n").encode("utf-8")
    Path(path).parent.mkdir(parents=True, exist_ok=True)
    fd = os.open(path, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o666)
    try:
        os.write(fd, line)
    finally:
        os.close(fd)


def iter_jsonl(path: str | os.PathLike, strict: bool = True) -> Iterator[dict]:
    """The JSON objects of a JSONL file, one per non-blank line.

    strict=True (inputs: data, texts): a line that is not a JSON object stops with an error naming the file and
    line. strict=False (logs other processes append to, e.g. result rows): an unterminated last line is a torn
    write and is skipped silently; any other bad line — invalid UTF-8, not JSON, not an object — is skipped with
    a warning naming the file and line."""
    path = Path(path)
    data = path.read_bytes()
    lines = data.split(b"\n")
    if not strict:
        lines = lines[:-1]  # b"" after the final newline, or an unterminated tail
    for number, raw in enumerate(lines, start=1):
        if not raw.strip():
            continue
        try:
            obj = json.loads(raw.decode("utf-8"))
            if not isinstance(obj, dict):
                raise ValueError(f"a JSON {type(obj).__name__}, not an object")
        except (UnicodeDecodeError, ValueError) as err:
            if strict:
                raise ValueError(f"{path}:{number}: not a JSON object ({err})") from None
            warnings.warn(f"{path}:{number}: skipping a line that is not a JSON object ({err})", stacklevel=2)
            continue
        yield obj


def read_jsonl(path: str | os.PathLike) -> list[dict]:
    return list(iter_jsonl(path, strict=True))


def stale_tmp(parent: Path, name: str = "") -> list[Path]:
    """Leftovers of killed writers (a SIGKILL skips the clean-up above) in `parent` — of `name` only, if given;
    whoever holds the writers' lock may remove them (asset builds, result rows)."""
    return sorted(Path(parent).glob(f"{TMP_PREFIX}{name}{'-' if name else ''}*")) if Path(parent).is_dir() else []
