"""Git revisions under test (`quarry perf PROFILE --rev A --rev B`) and copies of seeded databases.

Each revision is checked out into a temporary `git worktree` (detached, no network) and its
platform runs from there: `quarry up` is started with the worktree as working directory and
first on PYTHONPATH, so its API, worker and migrations are that revision's code, while the
interpreter and installed packages are this checkout's virtualenv. That is only sound when the
venv satisfies the revision's `[project] dependencies`: `dependency_problems` checks every
requirement against the installed distributions, and the run refuses a revision with unmet ones
(`--allow-dependency-drift` runs it anyway). The special revision `.` is this checkout as it is
on disk, uncommitted changes included.

Databases: `copy_database` copies a stopped embedded Postgres data folder (`cp -a`, owners and
modes kept), so a second revision with the same migrations starts from exactly the corpus the
first one was seeded with, and a suite data dir can start from the search benchmark's prepared
50,000-chunk database (`--corpus-from`).
"""

from __future__ import annotations

import hashlib
import os
import shutil
import subprocess
import tempfile
import time
import tomllib
from dataclasses import dataclass
from importlib import metadata
from pathlib import Path

from packaging.requirements import InvalidRequirement, Requirement

from perf.suite.platform import REPO, log

__all__ = ["CURRENT", "Revision", "copy_database", "dependency_problems", "migrations_id", "postgres_running",
           "prepare_revisions", "remove_worktrees"]

CURRENT = "."
"""The revision name of this checkout as it is on disk (uncommitted changes included)."""


@dataclass
class Revision:
    label: str
    """A (the baseline) or B."""
    spec: str
    """As given on the command line (a branch, tag, sha, HEAD~1, or `.`)."""
    sha: str
    subject: str
    root: Path
    """The source tree the platform runs from: a temporary worktree, or the checkout for `.`."""
    temporary: bool
    migrations: str = ""
    dependency_problems: tuple[str, ...] = ()

    @property
    def short(self) -> str:
        return self.sha[:10]

    def describe(self) -> str:
        return f"{self.label} = {self.spec} ({self.short}: {self.subject})"


def _git(repo: Path, *argv: str) -> str:
    result = subprocess.run(["git", "-C", str(repo), *argv], capture_output=True, text=True, check=False)
    if result.returncode != 0:
        raise SystemExit(f"quarry perf: git {' '.join(argv)} failed in {repo}: {result.stderr.strip()}")
    return result.stdout.strip()


def migrations_id(root: Path) -> str:
    """A digest of storage/migrations/*.sql under `root`: equal digests, interchangeable databases."""
    digest = hashlib.sha256()
    folder = root / "storage" / "migrations"
    for path in sorted(folder.glob("*.sql")) if folder.is_dir() else []:
        digest.update(path.name.encode() + b"\0" + path.read_bytes() + b"\0")
    return digest.hexdigest()[:16]


def _requirements(root: Path) -> list[str]:
    with open(root / "pyproject.toml", "rb") as f:
        return list(tomllib.load(f).get("project", {}).get("dependencies", []))


def dependency_problems(root: Path) -> list[str]:
    """The revision's runtime requirements (`[project] dependencies`) this venv does not satisfy."""
    problems = []
    for text in _requirements(root):
        try:
            req = Requirement(text)
        except InvalidRequirement as exc:
            problems.append(f"{text!r}: {exc}")
            continue
        if req.marker is not None and not req.marker.evaluate():
            continue
        try:
            installed = metadata.version(req.name)
        except metadata.PackageNotFoundError:
            problems.append(f"{req} (not installed)")
            continue
        if req.specifier and not req.specifier.contains(installed, prereleases=True):
            problems.append(f"{req} (installed: {installed})")
    return problems


def prepare_revisions(specs: list[str], repo: Path, allow_drift: bool = False) -> list[Revision]:
    """Resolve the revisions and check each one out into a temporary worktree of `repo`."""
    if len(specs) != 2:
        raise SystemExit("quarry perf: give exactly two revisions, --rev A --rev B (A is the baseline)")
    repo = repo.resolve()
    resolved = []
    for label, spec in zip("AB", specs, strict=True):
        if spec == CURRENT:
            if repo != REPO:
                raise SystemExit(f"quarry perf: --rev . means this checkout ({REPO}); it cannot come from --rev-repo")
            sha = _git(repo, "rev-parse", "HEAD")
            dirty = bool(_git(repo, "status", "--porcelain", "--untracked-files=no"))
            resolved.append((label, spec, sha + ("+dirty" if dirty else ""), "the checkout as it is on disk"))
        else:
            sha = _git(repo, "rev-parse", "--verify", f"{spec}^{{commit}}")
            subject = _git(repo, "log", "-1", "--format=%s", sha)
            resolved.append((label, spec, sha, subject if len(subject) <= 100 else subject[:99] + "…"))
    if resolved[0][2] == resolved[1][2] and CURRENT not in specs:
        log(f"note: both revisions are {resolved[0][2][:10]}: the run measures the spread of identical code")
    revisions: list[Revision] = []
    try:
        for label, spec, sha, subject in resolved:
            if spec == CURRENT:
                root, temporary = REPO, False
            else:
                root = Path(tempfile.mkdtemp(prefix=f"quarry-rev-{label}-{sha[:10]}-"))
                root.rmdir()  # git worktree add wants to create it
                _git(repo, "worktree", "add", "--detach", str(root), sha)
                temporary = True
            rev = Revision(label=label, spec=spec, sha=sha, subject=subject, root=root, temporary=temporary)
            revisions.append(rev)
            rev.migrations = migrations_id(root)
            rev.dependency_problems = tuple(dependency_problems(root))
            log(f"revision {rev.describe()} in {root}")
    except BaseException:
        remove_worktrees(revisions, repo)
        raise
    unmet = [r for r in revisions if r.dependency_problems]
    if unmet and not allow_drift:
        remove_worktrees(revisions, repo)
        lines = [f"  {r.label} ({r.spec}): {p}" for r in unmet for p in r.dependency_problems]
        raise SystemExit("quarry perf: this virtualenv does not satisfy the dependencies of\n" + "\n".join(lines)
                         + "\nInstall them (pip install from PyPI), or pass --allow-dependency-drift to run "
                         "the revision on this venv anyway (its numbers then include the version difference).")
    return revisions


def remove_worktrees(revisions: list[Revision], repo: Path) -> None:
    for rev in revisions:
        if rev.temporary and rev.root.exists():
            subprocess.run(["git", "-C", str(repo), "worktree", "remove", "--force", str(rev.root)],
                           capture_output=True, check=False)
            shutil.rmtree(rev.root, ignore_errors=True)
    subprocess.run(["git", "-C", str(repo), "worktree", "prune"], capture_output=True, check=False)


def postgres_running(data_dir: Path) -> bool:
    """Whether a postmaster runs on `data_dir/postgres` (its pid file names a live process)."""
    try:
        pid = int((data_dir / "postgres" / "postmaster.pid").read_text().splitlines()[0])
        os.kill(pid, 0)
    except (OSError, ValueError, IndexError):
        return False
    return True


def copy_database(source: Path, dest: Path) -> float:
    """Copy the seeded state of one platform data dir into another (which has no database yet):
    the stopped Postgres data folder and the uploaded files. Returns the seconds it took."""
    if postgres_running(source):
        raise SystemExit(f"quarry perf: Postgres is running on {source / 'postgres'}; stop it before copying it")
    if not (source / "postgres" / "PG_VERSION").exists():
        raise SystemExit(f"quarry perf: {source} holds no Postgres data folder (postgres/PG_VERSION)")
    if (dest / "postgres").exists():
        raise SystemExit(f"quarry perf: {dest / 'postgres'} exists already; not overwriting it")
    started = time.monotonic()
    dest.mkdir(parents=True, exist_ok=True)
    # postgres.secrets.json: the copied cluster's passwords (storage/embedded.py)
    for name in ("postgres", "postgres.secrets.json", "uploads"):
        if (source / name).exists():
            # cp -a keeps owners and modes (the embedded server runs as its own OS user when we are root)
            subprocess.run(["cp", "-a", str(source / name), str(dest / name)], check=True)
    (dest / "postgres" / "postmaster.pid").unlink(missing_ok=True)
    seconds = time.monotonic() - started
    log(f"copied the database of {source} into {dest} in {seconds:.1f} s")
    return seconds
