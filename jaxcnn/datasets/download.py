"""Source 4: downloads of the canonical files (placeholder while it is being written)."""

from __future__ import annotations

import pathlib

from jaxcnn.datasets.base import Dataset
from jaxcnn.datasets.records import DatasetRecord


def from_download(name: str, data_dir: pathlib.Path | None, notes: list[str]) -> Dataset | None:
    return None


def how_to_download(record: DatasetRecord) -> str:
    return f"download {', '.join(f.name for f in record.files)} from {record.hosts[0]}"
