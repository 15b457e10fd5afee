"""The commit every result row records, and the run's honest header note."""

import subprocess
from pathlib import Path

import pytest

from attn_bench import results
from attn_bench.results import COMMIT_ENV, git_sha, run_note


def _repo(path: Path) -> str:
    git = {"cwd": path, "check": True, "capture_output": True, "text": True}
    subprocess.run(["git", "init", "-q"], **git)
    (path / "f.txt").write_text("x")
    subprocess.run(["git", "add", "f.txt"], **git)
    subprocess.run(["git", "-c", "user.name=t", "-c", "user.email=t@t", "commit", "-q", "-m", "m"], **git)
    return subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], **git).stdout.strip()


@pytest.fixture
def no_checkout(monkeypatch, tmp_path):
    """attn_bench as an installed wheel: no git history around its files."""
    monkeypatch.delenv(COMMIT_ENV, raising=False)
    real = results._git_head
    outside = tmp_path / "site-packages"
    outside.mkdir()
    monkeypatch.setattr(results, "__file__", str(outside / "results.py"))
    monkeypatch.setenv("GIT_CEILING_DIRECTORIES", str(tmp_path))
    return real


def test_environment_variable_wins(monkeypatch):
    monkeypatch.setenv(COMMIT_ENV, "1d1c36c")
    assert git_sha() == "1d1c36c"


def test_checkout_commit(monkeypatch):
    monkeypatch.delenv(COMMIT_ENV, raising=False)
    here = Path(results.__file__).resolve().parent
    head = subprocess.run(["git", "rev-parse", "--short=12", "HEAD"], cwd=here, capture_output=True, text=True)
    if head.returncode != 0:
        pytest.skip("attn_bench is not running from a git checkout")
    assert git_sha().removesuffix("-dirty") == head.stdout.strip()


def test_installed_from_a_local_checkout(no_checkout, monkeypatch, tmp_path):
    repo = tmp_path / "checkout"
    repo.mkdir()
    sha = _repo(repo)
    monkeypatch.setattr(results, "_installed_from", lambda: {"url": repo.as_uri(), "dir_info": {}})
    assert git_sha() == sha
    (repo / "f.txt").write_text("changed")
    assert git_sha() == sha + "-dirty"


def test_installed_from_a_git_url(no_checkout, monkeypatch):
    origin = {"url": "https://example.org/triton-attn.git", "vcs_info": {"vcs": "git", "commit_id": "ab" * 20}}
    monkeypatch.setattr(results, "_installed_from", lambda: origin)
    assert git_sha() == "ab" * 6


def test_unknown_without_any_source(no_checkout, monkeypatch, tmp_path):
    monkeypatch.setattr(results, "_installed_from", lambda: {"url": (tmp_path / "gone").as_uri()})
    assert git_sha() == "unknown"
    monkeypatch.setattr(results, "_installed_from", lambda: None)
    assert git_sha() == "unknown"


def test_every_row_carries_the_commit(monkeypatch, tmp_path):
    from attn_bench.runner import RunOptions, run

    monkeypatch.setenv(COMMIT_ENV, "cafe123")
    out = run(RunOptions(suites=["smoke"], providers=["torch-sdpa"], out=tmp_path, max_cases=2, runs=1, plot=False))
    rows = results.read_csv(out / "results.csv")
    assert rows and {r.git_sha for r in rows} == {"cafe123"}
    assert "cafe123" in (out / "summary.md").read_text()


def test_run_note_is_honest(synthetic):
    ok, err = synthetic("torch-sdpa", 5.0), synthetic("ours-paged", 1.0, status="skipped")
    err.status = "error"
    assert run_note([ok], cpu=False, interpreter=False) is None
    assert "no provider produced a timing" in run_note([err], cpu=False, interpreter=False)
    interp = run_note([ok, err], cpu=True, interpreter=True)
    assert "Triton interpreter" in interp and "NOT performance numbers" in interp
    plain = run_note([ok, err], cpu=True, interpreter=False)
    assert "TRITON_INTERPRET is not set" in plain and "1 rows are errors" in plain
    assert "through the Triton interpreter" not in plain
