"""Folder sources are confined to `<root>/<tenant id>`: other tenants' folders, the rest of the
disk and the data directory are unreachable by path, `..`, absolute path or symbolic link,
including a link swapped in after the checks (TOCTOU)."""

from __future__ import annotations

import errno
import os
from pathlib import Path
from typing import Any

import msgspec
import pytest

from core.settings import SettingsError, load_settings
from rag.connectors import ConfigError, ConnectorError, Fetched, FolderRoots, NetPolicy, validate_config
from rag.connectors.config import FolderConfig, resolve_folder
from rag.connectors.factory import make_connector
from rag.connectors.folder import FolderConnector

ME, OTHER = "11111111-1111-4111-8111-111111111111", "22222222-2222-4222-8222-222222222222"
SECRET = "the other tenant's secret formula"


@pytest.fixture
def layout(tmp_path: Path) -> dict[str, Path]:
    root = tmp_path / "roots"
    mine, theirs = root / ME, root / OTHER
    (mine / "docs" / "sub").mkdir(parents=True)
    (mine / "docs" / "a.md").write_text("my own notes")
    (mine / "docs" / "sub" / "b.md").write_text("my nested notes")
    theirs.mkdir(parents=True)
    (theirs / "secret.md").write_text(SECRET)
    (theirs / "sub").mkdir()
    (theirs / "sub" / "b.md").write_text(SECRET)
    outside = tmp_path / "outside"
    outside.mkdir()
    (outside / "passwd").write_text(SECRET)
    return {"root": root, "mine": mine, "theirs": theirs, "outside": outside}


def _roots(layout: dict[str, Path]) -> FolderRoots:
    return FolderRoots.parse(str(layout["root"]), data_dir=layout["root"].parent / "data")


def _validate(path: str, roots: FolderRoots, tenant: str = ME) -> Any:
    return validate_config("folder", {"path": path}, policy=NetPolicy(""), folder_roots=roots, tenant_id=tenant)


async def _scan(connector: Any) -> dict[str, bytes]:
    return {r.uri: r.data async for r in connector.scan({}) if isinstance(r, Fetched)}


def _connector(path: str, roots: FolderRoots, tenant: str = ME) -> Any:
    return make_connector("folder", {"path": path}, tenant_id=tenant, policy=NetPolicy(""), folder_roots=roots,
                          max_item_bytes=1 << 20, timeout_s=5, user_agent="t")


def test_relative_and_absolute_paths_inside_the_tenant_folder(layout: dict[str, Path]) -> None:
    roots = _roots(layout)
    for path in ("docs", "./docs", str(layout["mine"] / "docs"), ".", str(layout["mine"])):
        _validate(path, roots)
    assert resolve_folder(FolderConfig(path="docs/sub"), roots, ME).parts == ("docs", "sub")


@pytest.mark.parametrize("template", [
    f"../{OTHER}", f"docs/../../{OTHER}", "{theirs}", "{root}", "..", "{outside}", "/etc", f"{{mine}}/../{OTHER}",
    "link-out", "link-other", "docs/link-up",
])
async def test_paths_leaving_the_tenant_folder_are_refused(layout: dict[str, Path], template: str) -> None:
    (layout["mine"] / "link-out").symlink_to(layout["outside"])
    (layout["mine"] / "link-other").symlink_to(layout["theirs"])
    (layout["mine"] / "docs" / "link-up").symlink_to("../../" + OTHER)
    roots = _roots(layout)
    path = template.format(**{k: str(v) for k, v in layout.items()})
    with pytest.raises(ConfigError) as info:
        _validate(path, roots)
    assert info.value.field == "config.path" and "inside this tenant's folder" in info.value.message
    with pytest.raises(ConfigError):  # the sync re-validates: a stored bad path reads nothing either
        _connector(path, roots)


def test_another_tenant_cannot_name_my_folder(layout: dict[str, Path]) -> None:
    with pytest.raises(ConfigError):
        _validate(str(layout["mine"] / "docs"), _roots(layout), tenant=OTHER)


def test_missing_tenant_folder_says_what_to_create(layout: dict[str, Path]) -> None:
    newcomer = "33333333-3333-4333-8333-333333333333"
    with pytest.raises(ConfigError, match=f"creates `{newcomer}/`"):
        _validate("docs", _roots(layout), tenant=newcomer)


async def test_links_inside_the_folder_are_confined(layout: dict[str, Path]) -> None:
    docs = layout["mine"] / "docs"
    (docs / "leak.md").symlink_to(layout["theirs"] / "secret.md")
    (docs / "passwd.md").symlink_to(layout["outside"] / "passwd")
    (docs / "leakdir").symlink_to(layout["theirs"])
    (docs / "inner.md").symlink_to("sub/b.md")  # stays inside: followed
    os.mkfifo(docs / "pipe.md")  # would block a plain open() forever
    connector = _connector("docs", _roots(layout))
    fetched = await _scan(connector)
    assert set(fetched) == {"a.md", "sub/b.md", "inner.md"}
    assert fetched["inner.md"] == b"my nested notes"
    assert all(SECRET.encode() not in data for data in fetched.values())
    notes = "\n".join(connector.notes)
    assert "leak.md: skipped, a link that leads outside" in notes and "passwd.md: skipped" in notes
    assert "pipe.md: skipped, not a regular file" in notes


async def test_folder_swapped_for_a_link_after_the_check(layout: dict[str, Path]) -> None:
    connector = _connector("docs", _roots(layout))  # checked now...
    docs = layout["mine"] / "docs"
    docs.rename(layout["mine"] / "docs-moved")
    docs.symlink_to(layout["theirs"])  # ...then swapped before the scan opens it
    with pytest.raises(ConnectorError, match="symbolic link"):
        await _scan(connector)


async def test_file_and_directory_swapped_for_links_between_listing_and_reading(layout: dict[str, Path]) -> None:
    roots = _roots(layout)
    config = msgspec.convert({"path": "docs"}, FolderConfig)
    connector = FolderConnector(config, resolve_folder(config, roots, ME), max_item_bytes=1 << 20)
    folder_fd = connector._open_folder()
    try:
        listed = {rel: parts for rel, parts, _ in connector._list(folder_fd)}
        assert set(listed) == {"a.md", "sub/b.md"}
        docs = layout["mine"] / "docs"
        (docs / "a.md").unlink()
        (docs / "a.md").symlink_to(layout["theirs"] / "secret.md")
        (docs / "sub").rename(docs / "sub-moved")
        (docs / "sub").symlink_to(layout["theirs"] / "sub")
        for rel in ("a.md", "sub/b.md"):
            with pytest.raises(OSError) as info:
                connector._read(folder_fd, listed[rel])
            assert info.value.errno in (errno.ELOOP, errno.ENOTDIR)
    finally:
        os.close(folder_fd)
    # A full scan now: the swapped-in links are skipped, the moved folder is still mine.
    fetched = await _scan(connector)
    assert fetched == {"sub-moved/b.md": b"my nested notes"}


def test_roots_overlapping_the_data_directory_are_refused(tmp_path: Path) -> None:
    data = tmp_path / "data"
    (data / "uploads").mkdir(parents=True)
    for root in (tmp_path, data, data / "uploads"):
        roots = FolderRoots.parse(f"/nonexistent-root, {root}", data_dir=data)
        assert roots.problem and "overlaps the data directory" in roots.problem
        with pytest.raises(ConfigError, match="overlaps the data directory"):
            _validate(".", roots)
        with pytest.raises(SettingsError, match=r"QUARRY_CONNECTOR_FOLDER_ROOTS.*overlaps QUARRY_DATA_DIR"):
            load_settings(environ={}, dotenv=None, data_dir=str(data), connector_folder_roots=f"/srv, {root}")
    link = tmp_path / "alias"
    link.symlink_to(data)  # through a link too
    assert FolderRoots.parse(str(link / "uploads"), data_dir=data).problem
    assert FolderRoots.parse(str(tmp_path / "sources"), data_dir=data).problem is None


def test_nested_roots_are_refused(tmp_path: Path) -> None:
    """`<A>/<tenant a>/x` as a second root would put tenant b's folder inside tenant a's."""
    outer = tmp_path / "outer"
    inner = outer / ME / "inner"
    inner.mkdir(parents=True)
    roots = FolderRoots.parse(f"{outer},{inner}", data_dir=tmp_path / "data")
    assert roots.problem and "two folder roots overlap" in roots.problem
    with pytest.raises(ConfigError, match="two folder roots overlap"):
        _validate(".", roots, tenant=OTHER)
    assert FolderRoots.parse(f"{outer},{outer}/", data_dir=None).problem is None  # the same root twice is one root


async def test_listing_is_bounded_and_a_cut_listing_deletes_nothing(
    layout: dict[str, Path], monkeypatch: pytest.MonkeyPatch
) -> None:
    from rag.connectors import folder

    monkeypatch.setattr(folder, "MAX_FILES", 1)
    connector = _connector("docs", _roots(layout))
    fetched = await _scan(connector)
    assert list(fetched) == ["a.md"] and connector.complete is False
    assert "stopped listing at 1 files" in connector.notes[-1]
