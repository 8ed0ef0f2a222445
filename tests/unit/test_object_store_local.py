"""A local ObjectStore writes whole objects or nothing, from bytes or from a file."""

from __future__ import annotations

from pathlib import Path

from workloads.store import ObjectStore


def test_bytes_and_an_uploaded_file_land_whole_with_no_temp_file_beside_them(tmp_path: Path) -> None:
    store = ObjectStore()
    source = tmp_path / "split.parquet"
    source.write_bytes(b"x" * 3_000_000)

    store.upload(source, (tmp_path / "store" / "a" / "split.parquet").as_uri())
    store.write_bytes((tmp_path / "store" / "a" / "manifest.json").as_uri(), b"{}")

    folder = tmp_path / "store" / "a"
    assert sorted(p.name for p in folder.iterdir()) == ["manifest.json", "split.parquet"]
    assert (folder / "split.parquet").read_bytes() == source.read_bytes()
    assert (folder / "manifest.json").read_bytes() == b"{}"
