"""Every schema stays backward compatible with its previous committed version.

For each ``schemas/*.avsc`` the previous version is the newest commit whose copy of the file
differs from the working tree (so an uncommitted edit is compared with HEAD, and a committed one
with the commit before it). The whole ``schemas/`` directory is taken from that commit, because
the old file's references to other files mean what they meant then. Samples written with the old
schema must decode through the current catalog, whose history holds the old schema.
"""

from __future__ import annotations

import io
import json
import shutil
import subprocess
from pathlib import Path

import pytest
from fastavro import schemaless_reader, schemaless_writer
from fixtures.avro_samples import sample_record

from schemas import SchemaCatalog, SchemaEntry, SchemaMismatchError, SingleObjectCodec

ROOT = Path(__file__).resolve().parents[2]
SCHEMA_FILES = sorted(p.name for p in (ROOT / "schemas").glob("*.avsc"))
EVOLUTION = Path(__file__).resolve().parent / "fixtures" / "evolution"


def _git(repo: Path, *args: str) -> str:
    return subprocess.run(
        ["git", "-C", str(repo), *args], check=True, capture_output=True, text=True
    ).stdout


def _require_git(repo: Path) -> None:
    if shutil.which("git") is None:
        pytest.skip("git is not installed")
    try:
        _git(repo, "rev-parse", "--git-dir")
    except subprocess.CalledProcessError:
        pytest.skip(f"{repo} is not a git checkout")


def previous_version(repo: Path, rel_file: str) -> str | None:
    """The newest commit whose copy of ``rel_file`` differs from the working tree's."""
    current = json.loads((repo / rel_file).read_text())
    for sha in _git(repo, "log", "--format=%H", "--", rel_file).split():
        try:
            old = json.loads(_git(repo, "show", f"{sha}:{rel_file}"))
        except subprocess.CalledProcessError:
            return None  # deleted in that commit: nothing earlier that matters
        if old != current:
            return sha
    return None


def schemas_at(repo: Path, sha: str, schema_dir: str, into: Path) -> SchemaCatalog:
    """The catalog as it was at ``sha``."""
    into.mkdir(parents=True)
    for rel in _git(repo, "ls-tree", "--name-only", sha, f"{schema_dir}/").split():
        if rel.endswith(".avsc"):
            (into / Path(rel).name).write_text(_git(repo, "show", f"{sha}:{rel}"))
    return SchemaCatalog.load(into, history_directory=into / "none")


def assert_old_data_readable(old: SchemaEntry, current_dir: Path, scratch: Path) -> None:
    """Data written with ``old`` decodes with the current schema of the same name."""
    history = scratch / "history"
    history.mkdir()
    (history / "old.avsc").write_text(old.expanded_json)
    current = SchemaCatalog.load(current_dir, history_directory=history)
    new = current.entry(old.full_name)

    if old.type == "enum":
        for symbol in old.expanded["symbols"]:
            buf = _write(old, symbol)
            read = schemaless_reader(buf, old.parsed, new.parsed)
            assert read in new.expanded["symbols"], f"{old.full_name}: {symbol} unreadable"
        return
    if old.type != "record":
        return

    old_fields = {f["name"] for f in old.expanded["fields"]}
    for full in (True, False):
        record = sample_record(old, full=full)
        data = SingleObjectCodec(_only(old)).encode(old.full_name, record)
        decoded = SingleObjectCodec(current).decode(data, old.full_name)
        for f in new.expanded["fields"]:
            assert f["name"] in decoded
            if f["name"] not in old_fields:
                assert decoded[f["name"]] == f["default"]


def _only(entry: SchemaEntry) -> SchemaCatalog:
    return SchemaCatalog([entry])


def _write(entry: SchemaEntry, datum: object) -> io.BytesIO:
    buf = io.BytesIO()
    schemaless_writer(buf, entry.parsed, datum)
    buf.seek(0)
    return buf


@pytest.mark.parametrize("file_name", SCHEMA_FILES)
def test_schema_reads_data_of_its_previous_version(file_name: str, tmp_path: Path) -> None:
    _require_git(ROOT)
    rel = f"schemas/{file_name}"
    sha = previous_version(ROOT, rel)
    if sha is None:
        pytest.skip(f"{rel} has no earlier committed version")
    old_catalog = schemas_at(ROOT, sha, "schemas", tmp_path / "old")
    old = next(e for e in old_catalog.entries() if e.source and e.source.name == file_name)
    assert_old_data_readable(old, ROOT / "schemas", tmp_path)


# -- the check itself, on a throwaway repository -------------------------------------------------


def _repo_with(tmp_path: Path, *versions: Path) -> Path:
    repo = tmp_path / "repo"
    (repo / "schemas").mkdir(parents=True)
    _git(repo, "init", "-q")
    for version in versions:
        for f in (repo / "schemas").glob("*.avsc"):
            f.unlink()
        for f in version.glob("*.avsc"):
            shutil.copy(f, repo / "schemas" / f.name)
        _git(repo, "add", "-A", "schemas")
        _git(repo, "-c", "user.name=t", "-c", "user.email=t@example.com", "commit", "-qm", "v")
    return repo


@pytest.mark.parametrize(("new_version", "compatible"), [("v2", True), ("v2_breaking", False)])
def test_check_detects_incompatible_change(
    tmp_path: Path, new_version: str, compatible: bool
) -> None:
    _require_git(ROOT)
    repo = _repo_with(tmp_path, EVOLUTION / "v1", EVOLUTION / new_version)
    sha = previous_version(repo, "schemas/widget.avsc")
    assert sha is not None
    assert previous_version(repo, "schemas/size.avsc") is None  # unchanged since v1
    old = schemas_at(repo, sha, "schemas", tmp_path / "old").entry("Widget")
    scratch = tmp_path / "scratch"
    scratch.mkdir()
    if compatible:
        assert_old_data_readable(old, repo / "schemas", scratch)
    else:
        with pytest.raises(SchemaMismatchError, match="color"):
            assert_old_data_readable(old, repo / "schemas", scratch)
