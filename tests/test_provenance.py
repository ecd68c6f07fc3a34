"""Which code produced a result: the commit, "-dirty" when the tree differs, and the code's own tree id, which
identifies the commit even where the repository's git metadata is stale."""

import os
import shutil
import subprocess

import pytest

from nirvana import provenance as P
from nirvana.paths import REPO_ROOT


def git(repo, *args) -> str:
    return subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", *args], cwd=repo, check=True,
                          capture_output=True, text=True).stdout.strip()


def make_repo(path):
    path.mkdir()
    git(path, "init", "-q")
    (path / ".gitignore").write_text("*.log\n")
    (path / "code.py").write_text("x = 1\n")
    (path / "results").mkdir()
    (path / "results" / "rows.jsonl").write_text("{}\n")
    git(path, "add", ".")
    git(path, "commit", "-qm", "A")
    return path


def code_tree_by_git(repo, commit, scratch) -> str:
    """The commit's tree minus results/, the plain way: a scratch index, `git rm --cached`, `git write-tree`."""
    env = {**os.environ, "GIT_INDEX_FILE": str(scratch / "index")}

    def run(*args):
        return subprocess.run(["git", *args], cwd=repo, check=True, capture_output=True, text=True,
                              env=env).stdout.strip()

    run("read-tree", commit)
    # -f: the scratch index may hold results newer than the checkout's (a later commit that only added rows), which
    # `git rm` would otherwise refuse to drop as "staged content different from both the file and the HEAD"
    run("rm", "-r", "--cached", "-f", "-q", "--ignore-unmatch", "--", "results")
    return run("write-tree")


def test_git_hash_is_dirty_for_code_changes_not_for_results(tmp_path):
    repo = make_repo(tmp_path / "r")
    head = P.git_hash(repo)
    assert len(head) == 40
    (repo / "results" / "rows.jsonl").write_text("{}\n{}\n")  # a run appending its rows
    (repo / "results" / "new.md").write_text("table")
    assert P.git_hash(repo) == head
    (repo / "new_module.py").write_text("y = 2\n")  # new code is code too
    assert P.git_hash(repo) == f"{head}-dirty" == P.git_hash(repo / "results")  # from a subfolder: the same


def test_code_tree_is_the_code_alone_and_leaves_the_repository_untouched(tmp_path):
    repo = make_repo(tmp_path / "r")
    a = git(repo, "rev-parse", "HEAD")
    expected = code_tree_by_git(repo, a, tmp_path)  # writes its tree object into the repository: before the snapshot
    objects = sorted(p.name for p in (repo / ".git" / "objects").rglob("*"))
    tree = P.code_tree(repo)
    assert tree == expected != git(repo, "rev-parse", "HEAD^{tree}")  # results/ left out
    (repo / "results" / "rows.jsonl").write_text("{}\n{}\n")
    (repo / "run.log").write_text("ignored")
    assert P.code_tree(repo) == tree  # results and ignored files are not code
    (repo / "new_module.py").write_text("y = 2\n")
    changed = P.code_tree(repo)
    assert changed != tree
    assert sorted(p.name for p in (repo / ".git" / "objects").rglob("*")) == objects  # nothing written there
    assert git(repo, "diff", "--cached", "--name-only") == ""  # nothing staged in the real index
    assert P.code_tree(tmp_path / "r" / "results") == changed  # from a subfolder: still the whole work tree


def test_a_copy_with_stale_git_metadata_is_verified_as_the_commit_whose_files_it_holds(tmp_path):
    """The GPU-machine case: the work tree holds commit B's files, its .git still points at A."""
    repo = make_repo(tmp_path / "r")
    a = git(repo, "rev-parse", "HEAD")
    copy = tmp_path / "copy"
    git(tmp_path, "clone", "-q", str(repo), str(copy))
    (repo / "code.py").write_text("x = 2\n")
    (repo / "new_module.py").write_text("y = 2\n")
    git(repo, "add", ".")
    git(repo, "commit", "-qm", "B")
    b = git(repo, "rev-parse", "HEAD")
    git(repo, "commit", "--allow-empty", "-qm", "C (same code as B)")
    for name in ("code.py", "new_module.py"):  # B's files reach the copy without B's metadata
        shutil.copy(repo / name, copy / name)
    (copy / "results" / "rows.jsonl").write_text("{}\n{}\n")  # plus the run's own rows
    assert P.git_hash(copy) == f"{a}-dirty"
    tree = P.code_tree(copy)
    P._code_trees.cache_clear()
    # B and C carry the same code; the newest commit with it is named (here C), both are B's code bit for bit
    assert P.commit_with_code(tree, repo) == git(repo, "rev-parse", "HEAD") != b
    assert code_tree_by_git(repo, b, tmp_path) == tree
    assert P.commit_with_code(P.code_tree(repo), repo) == git(repo, "rev-parse", "HEAD")
    (copy / "code.py").write_text("x = 3\n")  # code no commit has
    assert P.commit_with_code(P.code_tree(copy), repo) is None
    assert P.commit_with_code(None, repo) is None


def test_a_commit_made_after_the_history_was_read_is_still_found(tmp_path):
    """A notebook reports, then the user commits the code its rows ran with, then it reports again."""
    repo = make_repo(tmp_path / "r")
    P._code_trees.cache_clear()
    assert P.commit_with_code(P.code_tree(repo), repo) == git(repo, "rev-parse", "HEAD")  # history now cached
    (repo / "code.py").write_text("x = 5\n")
    tree = P.code_tree(repo)
    git(repo, "commit", "-qam", "later")
    assert P.commit_with_code(tree, repo) == git(repo, "rev-parse", "HEAD")


def test_a_tree_no_commit_has_does_not_reread_the_history(tmp_path, monkeypatch):
    """Reports look up every dirty row's tree: with the refs unchanged, an unknown one must not cost a history read."""
    repo = make_repo(tmp_path / "r")
    P._code_trees.cache_clear()
    history_reads, git = [], P._git

    def counting_git(repo, *args, **kw):
        history_reads.extend(args[:1] if args[0] == "log" else ())
        return git(repo, *args, **kw)

    monkeypatch.setattr(P, "_git", counting_git)
    assert P.commit_with_code(P.code_tree(repo), repo) is not None
    assert P.commit_with_code("0" * 40, repo) is None and P.commit_with_code("1" * 40, repo) is None
    assert history_reads == ["log"]


def test_outside_a_repository_nothing_is_claimed(tmp_path):
    assert P.git_hash(tmp_path) == "unknown" and P.code_tree(tmp_path) is None
    assert P._code_trees(str(tmp_path)) == {}


@pytest.mark.skipif(not (REPO_ROOT / ".git").exists(), reason="needs the project's git history")
def test_the_project_names_a_commit_with_its_own_heads_code(tmp_path):
    """On this clone: the history read in one batch names, for HEAD's code, a commit whose code is HEAD's
    (HEAD itself, or a newer one that only added results)."""
    head = git(REPO_ROOT, "rev-parse", "HEAD")
    tree = code_tree_by_git(REPO_ROOT, head, tmp_path)
    named = P.commit_with_code(tree)
    assert named and code_tree_by_git(REPO_ROOT, named, tmp_path) == tree
