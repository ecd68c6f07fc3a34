"""Which code produced a result: the commit (`git_hash`) and the content of the code itself (`code_tree`).

`git_hash` names the checked-out commit, "-dirty" when the work tree differs from it. That is only as good as
the repository's metadata: a copy of the work tree whose .git is stale (a GPU machine that received the files of
a newer commit) records the stale commit as dirty although its code is exactly the newer commit's.
`code_tree` closes that gap: the git tree id of the code as it is on disk — tracked and untracked files, ignored
ones and `results/` left out — which is what `git write-tree` would give if the tree were committed. Later, on
a clone with the full history, `commit_with_code(code_tree)` finds the commit whose code is identical, bit for bit,
so such a result is verifiably clean. Computing it never writes to the repository (objects go to a temporary
directory).

    git_hash()                      # "1b0e892…" or "1b0e892…-dirty"
    code_tree()                     # "5de7229…": results/ excluded
    commit_with_code("5de7229…")    # "c3f384c…" or None
    verified_commit("69b039f…-dirty", ["5de7229…"])   # the same, for a dirty hash and all its results' trees
"""

from __future__ import annotations

import functools
import hashlib
import os
import shutil
import subprocess
import tempfile
from pathlib import Path

from .paths import REPO_ROOT

# Rows and tables a run writes describe the code, they are not it: never part of the code's identity.
RESULTS_DIR = "results"


def _git(repo: Path, *args: str, env: dict | None = None, stdin: bytes | None = None) -> bytes:
    return subprocess.run(["git", *args], cwd=repo, capture_output=True, timeout=30, check=True, env=env,
                          input=stdin).stdout


def git_hash(repo: Path = REPO_ROOT) -> str:
    """The commit of the code, "-dirty" when the work tree differs from it — untracked files included (new code
    is code too), the results folder excluded."""
    try:
        head = _git(repo, "rev-parse", "HEAD").decode().strip()
        dirty = _git(repo, "status", "--porcelain", "--", ":/", f":(top,exclude){RESULTS_DIR}").strip()
    except (OSError, subprocess.SubprocessError):
        return "unknown"
    return f"{head}-dirty" if dirty else head or "unknown"


def code_tree(repo: Path = REPO_ROOT) -> str | None:
    """The git tree id of the code in the work tree as it is now (None outside a git repository).

    A private index (seeded with the repository's, so only files whose stat changed are re-hashed) takes every
    file git would commit, minus `results/`; the objects this writes go to a temporary directory, with the
    repository's objects readable as alternates, so the repository is left untouched."""
    try:
        git_dir, objects = map(Path, _git(repo, "rev-parse", "--absolute-git-dir", "--git-path", "objects")
                               .decode().splitlines())
        with tempfile.TemporaryDirectory(prefix="nirvana-tree-") as tmp:
            index = Path(tmp) / "index"
            if (git_dir / "index").is_file():
                shutil.copyfile(git_dir / "index", index)
            (Path(tmp) / "objects").mkdir()
            env = {**os.environ, "GIT_INDEX_FILE": str(index), "GIT_OBJECT_DIRECTORY": str(Path(tmp) / "objects"),
                   "GIT_ALTERNATE_OBJECT_DIRECTORIES": str(objects if objects.is_absolute() else repo / objects)}
            _git(repo, "add", "-A", "--", ":/", env=env)  # ":/": the whole work tree, from any folder in it
            _git(repo, "rm", "-r", "--cached", "-f", "-q", "--ignore-unmatch", "--", f":/{RESULTS_DIR}", env=env)
            return _git(repo, "write-tree", env=env).decode().strip()
    except (OSError, subprocess.SubprocessError):
        return None


def commit_with_code(tree: str | None, repo: Path = REPO_ROOT) -> str | None:
    """The newest commit (of all refs) whose code — its tree minus `results/` — is `tree`; None if none is."""
    if not tree:
        return None
    # keyed by the refs: a commit made since the history was read (from a notebook) is found, and a tree no commit
    # has costs one `git show-ref`, not a re-read of the whole history
    return _code_trees(str(repo), _refs(Path(repo))).get(tree)


def _refs(repo: Path) -> str:
    """Every ref and HEAD with its commit: changes exactly when `git log --all` would."""
    try:
        return _git(repo, "show-ref", "--head").decode()
    except (OSError, subprocess.SubprocessError):
        return ""  # no refs yet, or no repository


def verified_commit(git_hash: str, code_trees, repo: Path = REPO_ROOT) -> str | None:
    """For a "-dirty" hash: the commit(s) ("a, b") whose code every one of `code_trees` (the trees its results
    recorded) is; None for a clean hash, or when any tree is missing (recorded before trees were) or no
    commit's code."""
    if not str(git_hash).endswith("-dirty"):
        return None
    commits = {commit_with_code(t, repo) if isinstance(t, str) else None for t in set(code_trees)}
    return None if not commits or None in commits else ", ".join(sorted(commits))


def describe(git_hash: str, verified: str | None) -> str:
    """How reports name a recorded commit: `<hash>`, or `<hash>-dirty (code identical to <commit>)`."""
    return f"{git_hash} (code identical to {verified})" if verified else git_hash


@functools.lru_cache(maxsize=4)
def _code_trees(repo: str, refs: str = "") -> dict[str, str]:
    """Code tree → newest commit with it, for every commit of every ref, read in one `git cat-file --batch`
    (`refs`, the state of the refs, only keys the cache).

    Dropping the `results` entry from a commit's top-level tree object and hashing what is left gives the id git
    would give that tree (entries stay sorted, the object format is "tree <size>\\0<entries>") — one process for
    the whole history instead of three git calls per commit."""
    try:
        log = _git(Path(repo), "log", "--all", "--format=%H %T").decode().split()
        algo = _git(Path(repo), "rev-parse", "--show-object-format").decode().strip()
        commits, trees = log[0::2], log[1::2]
        raw = _git(Path(repo), "cat-file", "--batch", stdin="".join(t + "\n" for t in trees).encode())
    except (OSError, subprocess.SubprocessError, IndexError):
        return {}
    width = hashlib.new(algo).digest_size
    found: dict[str, str] = {}
    pos = 0
    for commit in commits:  # newest first: the first commit seen with a tree keeps it
        header_end = raw.index(b"\n", pos)
        size = int(raw[pos:header_end].split()[2])
        body = raw[header_end + 1: header_end + 1 + size]
        pos = header_end + 1 + size + 1
        found.setdefault(hashlib.new(algo, _without(body, RESULTS_DIR.encode(), width)).hexdigest(), commit)
    return found


def _without(tree_body: bytes, name: bytes, width: int) -> bytes:
    """A tree object (header included) with the entry `name` removed; entries are "<mode> <name>\\0<id bytes>"."""
    kept, pos = [], 0
    while pos < len(tree_body):
        nul = tree_body.index(b"\0", pos)
        end = nul + 1 + width
        if tree_body[pos:nul].split(b" ", 1)[1] != name:
            kept.append(tree_body[pos:end])
        pos = end
    body = b"".join(kept)
    return b"tree %d\0" % len(body) + body
