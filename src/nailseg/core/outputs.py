"""Where a command may write: never into a data set, never over one of its own inputs.

``eval --overlays D/labels`` once replaced every ground-truth mask with an overlay, and
``predict RUN D --out D`` overwrote ``a_mask.png`` beside ``a.jpg``. Every command that writes
checks its outputs here first, and refuses in one line before any work is done.
"""

from __future__ import annotations

import os
from collections.abc import Iterable
from pathlib import Path

from nailseg.errors import NailsegError

DATA_FOLDERS = ("images", "labels", "masks")


def _resolved(path: Path) -> Path:
    try:
        return Path(os.path.realpath(path))
    except (OSError, ValueError):
        return Path(os.path.abspath(path))


def data_folder_of(path: Path) -> Path | None:
    """The data set's ``images/``, ``labels/`` or ``masks/`` folder that ``path`` is (or lies in), if
    any: a folder of one of those names whose parent also has ``images/`` and ``labels/`` or ``masks/``."""
    resolved = _resolved(path)
    for folder in (resolved, *resolved.parents):
        if folder.name in DATA_FOLDERS:
            parent = folder.parent
            if (parent / "images").is_dir() and ((parent / "labels").is_dir() or (parent / "masks").is_dir()):
                return folder
    return None


def refuse_data_folder(out: str | os.PathLike[str], flag: str, data_roots: Iterable[str | os.PathLike[str]] = ()) -> Path:
    """``out`` unless it is inside a data set's images/labels/masks folder (or one of ``data_roots``'s)."""
    out = Path(out)
    inside = data_folder_of(out)
    for root in data_roots:
        for name in DATA_FOLDERS:
            folder = _resolved(Path(root) / name)
            if folder.is_dir() and (_resolved(out) == folder or folder in _resolved(out).parents):
                inside = folder
    if inside is not None:
        raise NailsegError(f"{flag} {out}: is inside the data set folder {inside}; nailseg never writes into a "
                           "data set's images/, labels/ or masks/ (choose another folder)")
    return out


def refuse_overwriting_inputs(outputs: Iterable[Path], inputs: Iterable[Path], flag: str) -> None:
    """Refuse when any planned output file is one of the inputs (or the same file by another path)."""
    taken = {_resolved(p) for p in inputs}
    for path in outputs:
        if _resolved(path) in taken:
            raise NailsegError(f"{flag}: would overwrite the input {path}; choose another output folder")
