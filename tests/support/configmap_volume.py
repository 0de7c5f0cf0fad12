"""A directory laid out and updated the way the kubelet writes a ConfigMap or Secret volume.

Kubernetes' atomic writer (pkg/volume/util/atomic_writer.go) never changes a file in place:

    dir/..2026_01_01_00_00_00.1/connectors.yaml     the payload, in a timestamped directory
    dir/..data -> ..2026_01_01_00_00_00.1           the one link that is swapped
    dir/connectors.yaml -> ..data/connectors.yaml   what the container is pointed at

An update writes a new timestamped directory, points a new link `..data_tmp` at it, renames that
link onto `..data` (one atomic rename), adds or removes the user-visible links, and deletes the old
directory. `ConfigMapVolume.write` does exactly that, so tests see what a pod sees.

Usage::

    volume = ConfigMapVolume(tmp_path / "connectors")
    path = volume.write({"connectors.yaml": "connectors: []\\n"})["connectors.yaml"]
"""

from __future__ import annotations

import itertools
import os
import shutil
from collections.abc import Mapping
from pathlib import Path

DATA_LINK = "..data"


class ConfigMapVolume:
    """A kubelet-style volume directory; `write` replaces its whole payload atomically."""

    _generations = itertools.count(1)

    def __init__(self, directory: Path) -> None:
        self.directory = directory
        directory.mkdir(parents=True, exist_ok=True)

    def write(self, files: Mapping[str, str]) -> dict[str, Path]:
        """Publish `files` (name -> text) as the new payload; returns each name's visible path."""
        generation = next(self._generations)
        payload = f"..2026_01_01_00_00_{generation:02d}.{os.getpid()}"
        payload_dir = self.directory / payload
        payload_dir.mkdir()
        for name, text in files.items():
            (payload_dir / name).write_text(text, encoding="utf-8")
        data_link = self.directory / DATA_LINK
        previous = os.readlink(data_link) if data_link.is_symlink() else None
        temporary_link = self.directory / f"{DATA_LINK}_tmp"
        temporary_link.symlink_to(payload)
        os.replace(temporary_link, data_link)
        for name in files:
            visible = self.directory / name
            if not visible.is_symlink():
                visible.symlink_to(f"{DATA_LINK}/{name}")
        for entry in self.directory.iterdir():
            if not entry.name.startswith("..") and entry.name not in files:
                entry.unlink()
        if previous is not None:
            shutil.rmtree(self.directory / previous)
        return {name: self.directory / name for name in files}
