"""Outputs appear complete or not at all: write next to the target, then rename into place; and never onto an
input."""
import os
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator

from nnunet_hpn.errors import HPNInputError


def _permissions(directory: bool) -> int:
    """What ``open``/``mkdir`` would give under the current umask (tempfile's own files are private, 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


@contextmanager
def atomic_file(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yields a temporary path next to ``path``; when the block succeeds it replaces ``path``, else it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=f".{path.name}.", suffix=suffix)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, _permissions(directory=False))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


def write_text_atomically(path: Path, text: str) -> None:
    """``path`` holds ``text`` afterwards, or is unchanged if writing failed."""
    with atomic_file(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def staging_dir(parent: Path, prefix: str) -> Path:
    """A new hidden folder in ``parent`` with ordinary permissions, to be renamed into place when complete."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(folder, _permissions(directory=True))
    return folder


def check_output_not_input(output: Path, inputs: Iterable[Path], option: str) -> None:
    """HPNInputError if ``output`` is one of ``inputs`` or lies inside one (a DICOM folder): inputs are never
    overwritten. ``option`` names the flag that set ``output`` (for the message)."""
    target = Path(output).resolve()
    for source in inputs:
        source = Path(source).resolve()
        if target == source or source in target.parents:
            raise HPNInputError(f"{output}: {option} would overwrite the input {source}; choose another path")
