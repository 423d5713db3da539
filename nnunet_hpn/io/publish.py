"""Outputs appear complete or not at all: write next to the target, then rename into place; and never onto an
input.

Files: :func:`atomic_file`, :func:`write_text_atomically`. Folders: :func:`published_folder` builds a hidden
staging folder next to the target and publishes it in one of three ways (:data:`PUBLISH_MODES`) when the block
succeeds; on failure the staging folder is removed and the target is as it was.
"""
import os
import re
import shutil
import tempfile
from contextlib import contextmanager
from pathlib import Path
from typing import Iterable, Iterator, Sequence

from nnunet_hpn.errors import HPNInputError


def _permissions(directory: bool) -> int:
    """What ``open``/``mkdir`` would give under the current umask (tempfile's own files are private, 0600)."""
    umask = os.umask(0)
    os.umask(umask)
    return (0o777 if directory else 0o666) & ~umask


def _process_alive(pid: int) -> bool:
    try:
        os.kill(pid, 0)
    except ProcessLookupError:
        return False
    except PermissionError:  # another user's process
        return True
    return True


def _hidden_prefix(target_name: str, kind: str) -> str:
    """Prefix of the hidden files next to an output: ``.<name>.<kind>.<pid>.`` (kind: staging, old, tmp)."""
    return f".{target_name}.{kind}.{os.getpid()}."


def remove_stale(parent: Path, target_name: str) -> list[Path]:
    """Remove the hidden staging folders, trash folders and temporary files of ``target_name`` in ``parent`` whose
    process no longer runs (a run killed before it could clean up); returns what was removed."""
    pattern = re.compile(rf"^\.{re.escape(target_name)}\.(staging|old|tmp)\.(\d+)\.")
    removed = []
    for path in Path(parent).iterdir() if Path(parent).is_dir() else []:
        match = pattern.match(path.name)
        if match and not _process_alive(int(match.group(2))):
            shutil.rmtree(path, ignore_errors=True) if path.is_dir() else path.unlink(missing_ok=True)
            removed.append(path)
    return removed


@contextmanager
def atomic_file(path: Path, suffix: str = ".tmp") -> Iterator[Path]:
    """Yields a temporary path next to ``path``; when the block succeeds it replaces ``path``, else it is removed."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(path.parent, path.name)
    handle, temporary = tempfile.mkstemp(dir=path.parent, prefix=_hidden_prefix(path.name, "tmp"), suffix=suffix)
    os.close(handle)
    try:
        yield Path(temporary)
        os.chmod(temporary, _permissions(directory=False))
        os.replace(temporary, path)
    except BaseException:
        Path(temporary).unlink(missing_ok=True)
        raise


@contextmanager
def atomic_files(paths: Sequence[Path], remove: Iterable[Path] = ()) -> Iterator[list[Path]]:
    """Yields a temporary path next to each of ``paths`` (same file endings); when the block succeeds every one
    replaces its target and the files of ``remove`` that are not among ``paths`` are deleted (an earlier run's
    output this run does not write), else every temporary is removed: the outputs of one piece of work appear
    together or not at all."""
    targets = [Path(path) for path in paths]
    temporaries: list[Path] = []
    try:
        for target in targets:
            target.parent.mkdir(parents=True, exist_ok=True)
            remove_stale(target.parent, target.name)
            suffix = "".join(target.suffixes[-2:]) if target.name.endswith(".nii.gz") else target.suffix
            handle, temporary = tempfile.mkstemp(dir=target.parent, prefix=_hidden_prefix(target.name, "tmp"),
                                                 suffix=suffix)
            os.close(handle)
            temporaries.append(Path(temporary))
        yield list(temporaries)
        for temporary, target in zip(temporaries, targets):
            os.chmod(temporary, _permissions(directory=False))
            os.replace(temporary, target)
        written = {target.resolve() for target in targets}
        for path in remove:
            if Path(path).resolve() not in written:
                Path(path).unlink(missing_ok=True)
    finally:
        for temporary in temporaries:
            temporary.unlink(missing_ok=True)


def write_text_atomically(path: Path, text: str) -> None:
    """``path`` holds ``text`` afterwards, or is unchanged if writing failed."""
    with atomic_file(path) as temporary:
        temporary.write_text(text, encoding="utf-8")


def staging_dir(parent: Path, prefix: str) -> Path:
    """A new hidden folder in ``parent`` with ordinary permissions, to be renamed into place when complete."""
    folder = Path(tempfile.mkdtemp(prefix=prefix, dir=parent))
    os.chmod(folder, _permissions(directory=True))
    return folder


#: How :func:`published_folder` publishes: "new" (the target is absent or an empty folder), "replace" (the target
#: and the folders in ``replaces`` are removed once the new folder is in place) or "merge" (every staged file moves
#: into the target, replacing a file of the same name; the target's other files stay).
PUBLISH_MODES: tuple[str, ...] = ("new", "replace", "merge")


def _publish(staging: Path, target: Path, mode: str, replaces: Sequence[Path]) -> None:
    if mode == "new":
        if target.exists():
            target.rmdir()  # an empty folder (callers check); OSError otherwise, nothing lost
        os.rename(staging, target)
    elif mode == "replace":
        old = list(dict.fromkeys(path for path in (target, *replaces) if path.exists()))
        trash = staging_dir(target.parent, prefix=_hidden_prefix(target.name, "old")) if old else None
        moved: list[tuple[Path, Path]] = []
        try:
            for index, path in enumerate(old):
                os.rename(path, trash / str(index))
                moved.append((trash / str(index), path))
            os.rename(staging, target)
        except BaseException:
            for source, original in reversed(moved):
                os.rename(source, original)
            raise
        if trash is not None:
            shutil.rmtree(trash, ignore_errors=True)
    else:  # "merge" (published_folder checked the mode)
        files = sorted(path for path in staging.rglob("*") if path.is_file())
        for path in files:
            destination = target / path.relative_to(staging)
            destination.parent.mkdir(parents=True, exist_ok=True)
            os.replace(path, destination)
        target.mkdir(parents=True, exist_ok=True)


@contextmanager
def published_folder(target: Path, mode: str = "new", replaces: Sequence[Path] = ()) -> Iterator[Path]:
    """Yields a hidden staging folder next to ``target`` (same file system); when the block succeeds its content is
    published into ``target`` as ``mode`` says (:data:`PUBLISH_MODES`). The staging folder never stays behind."""
    if mode not in PUBLISH_MODES:
        raise ValueError(f"unknown publish mode {mode!r}; one of {PUBLISH_MODES}")
    target = Path(target)
    target.parent.mkdir(parents=True, exist_ok=True)
    remove_stale(target.parent, target.name)
    staging = staging_dir(target.parent, prefix=_hidden_prefix(target.name, "staging"))
    try:
        yield staging
        _publish(staging, target, mode, [Path(path) for path in replaces])
    finally:
        shutil.rmtree(staging, ignore_errors=True)


@contextmanager
def exclusive_claim(lock: Path, what: str) -> Iterator[None]:
    """Holds ``lock`` (created exclusively, holding this process's id) for the block: a second process asking for the
    same claim gets HPNInputError naming ``what``; the lock of a process that no longer runs is taken over."""
    # Not the filelock package: its FileLock is the kernel's lock on the file, so a lock file naming a live process
    # does not hold off a second claim and the file stays behind; its SoftFileLock writes a record of its own, not
    # the bare process id, and does not take over a lock file whose process no longer runs.
    lock = Path(lock)
    lock.parent.mkdir(parents=True, exist_ok=True)
    for _ in range(2):
        try:
            handle = os.open(lock, os.O_CREAT | os.O_EXCL | os.O_WRONLY, _permissions(directory=False))
        except FileExistsError:
            try:
                owner = int(lock.read_text(encoding="utf-8").strip() or 0)
            except (OSError, ValueError):
                owner = 0
            if owner and _process_alive(owner):
                raise HPNInputError(f"{what}: being written by process {owner} ({lock}); wait for it to finish")
            lock.unlink(missing_ok=True)  # left by a killed run
            continue
        with os.fdopen(handle, "w") as stream:
            stream.write(str(os.getpid()))
        break
    else:
        raise HPNInputError(f"{what}: could not claim {lock}")
    try:
        yield
    finally:
        lock.unlink(missing_ok=True)


def check_output_location(output: Path, kind: str, option: str) -> None:
    """HPNInputError before any work when ``output`` cannot be written: ``kind`` "file" or "folder"; an existing
    path of the other type, or a nearest existing parent folder that is not a writable folder, is refused."""
    output = Path(output)
    if output.exists():
        if kind == "file" and output.is_dir():
            raise HPNInputError(f"{output}: {option} names a folder, expected a file path")
        if kind == "folder" and not output.is_dir():
            raise HPNInputError(f"{output}: {option} names an existing file, expected a folder")
    parent = output if kind == "folder" and output.is_dir() else output.parent
    while not parent.exists() and parent != parent.parent:
        parent = parent.parent
    if not parent.is_dir():
        raise HPNInputError(f"{output}: {option}: {parent} is a file, not a folder")
    if not os.access(parent, os.W_OK | os.X_OK):
        raise HPNInputError(f"{output}: {option}: no permission to write in {parent}")


def check_output_not_input(output: Path, inputs: Iterable[Path], option: str, folder: bool = False) -> None:
    """HPNInputError if ``output`` is one of ``inputs`` or lies inside one (a DICOM folder, a truth folder), or, for
    an output ``folder``, holds one: inputs are never overwritten. ``option`` names the flag that set ``output``."""
    target = Path(output).resolve()
    for source in inputs:
        source = Path(source).resolve()
        if target == source:
            raise HPNInputError(f"{output}: {option} would overwrite the input {source}; choose another path")
        if source in target.parents:
            raise HPNInputError(f"{output}: {option} lies inside the input folder {source}; choose another path")
        if folder and target in source.parents:
            raise HPNInputError(f"{output}: {option} is a folder holding the input {source}; choose another path")


#: Folders of an nnU-Net raw dataset that hold its images and labels (with its dataset.json: protected).
RAW_DATASET_FOLDERS: tuple[str, ...] = ("imagesTr", "labelsTr", "imagesTs", "labelsTs")


def protected_folder(path: Path) -> str | None:
    """What no command may write into that ``path`` (resolved) is or lies in, described, or None: a trained model
    folder (``plans.json`` and ``dataset.json`` beside ``fold_*`` folders: plans, checkpoints, nnU-Net's fold
    summaries), an nnU-Net preprocessed dataset (``dataset_fingerprint.json``: plans files, splits, data) or a raw
    dataset's ``dataset.json`` and image and label folders."""
    path = Path(path).resolve()
    for folder in (path, *path.parents):
        if not folder.is_dir():
            continue
        if (folder / "plans.json").is_file() and (folder / "dataset.json").is_file() \
                and any(child.is_dir() for child in folder.glob("fold_*")):
            return f"the trained model folder {folder}"
        if (folder / "dataset_fingerprint.json").is_file():
            return f"the nnU-Net preprocessed dataset {folder}"
        if (folder / "dataset.json").is_file() and any((folder / name).is_dir() for name in RAW_DATASET_FOLDERS):
            if path == folder / "dataset.json" or any(folder / name in (path, *path.parents)
                                                     for name in RAW_DATASET_FOLDERS):
                return f"the nnU-Net raw dataset {folder}"
    return None


def check_outputs(outputs: Sequence[tuple[Path, str, str]], inputs: Iterable[Path] = ()) -> None:
    """Every output of one command checked before any work. ``outputs``: (path, option, "file" or "folder"). An
    HPNInputError names the first output that equals another output of the command, is or lies inside an input
    (``inputs``: files or folders such as a truth folder) or, as a folder, holds one, lies inside a protected folder
    (:func:`protected_folder`), or cannot be written (:func:`check_output_location`)."""
    inputs = [Path(path) for path in inputs]
    seen: dict[Path, str] = {}
    for path, option, kind in outputs:
        resolved = Path(path).resolve()
        if resolved in seen:
            raise HPNInputError(f"{path}: {option} is the same path as {seen[resolved]}; choose another path")
        seen[resolved] = option
        check_output_not_input(Path(path), inputs, option, folder=kind == "folder")
        where = protected_folder(resolved)
        if where is not None:
            raise HPNInputError(f"{path}: {option} lies inside {where}; choose another path")
        check_output_location(Path(path), kind, option)


def replace_mode(folder: Path, marker: str, option: str) -> str:
    """How an output ``folder`` of a command that writes a whole set of files (marked by the file ``marker``) is
    published (:func:`published_folder`): "new" when absent or empty, "replace" when it holds an earlier set (the
    marker); any other folder is an HPNInputError (its files are not the command's to replace)."""
    folder = Path(folder)
    if not folder.is_dir() or not any(folder.iterdir()):
        return "new"
    if (folder / marker).is_file():
        return "replace"
    raise HPNInputError(f"{folder}: {option} names a folder that holds other files and no {marker} of an earlier "
                        f"run; choose a new or empty folder")
