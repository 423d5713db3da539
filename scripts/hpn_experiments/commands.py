"""The environment of nnU-Net's stock commands and one runner for them."""
from __future__ import annotations

import os
import subprocess
import sys
import time
from pathlib import Path
from typing import Callable, Mapping, Optional, Sequence

#: nnU-Net's three folders, as environment variables and as folder names under a work dir
NNUNET_FOLDERS: tuple[str, ...] = ("nnUNet_raw", "nnUNet_preprocessed", "nnUNet_results")


def console_command(name: str) -> str:
    """A console script of this environment (next to the running interpreter), else ``name`` as given (from PATH,
    or a path)."""
    local = Path(sys.executable).parent / name
    return str(local) if local.exists() else name


def nnunet_env(root: Optional[Path] = None, *, base: Optional[Mapping[str, str]] = None,
               settings: Optional[Mapping[str, str]] = None,
               defaults: Optional[Mapping[str, str]] = None) -> dict[str, str]:
    """The environment of nnU-Net's commands: ``base`` (default: this process's), nnU-Net's three folders under
    ``root`` (``root/nnUNet_raw`` …, when given), ``settings`` replacing inherited values and ``defaults`` (default:
    ``nnUNet_compile=f``, no ``torch.compile`` on the CPU) only where nothing is inherited."""
    env = dict(os.environ if base is None else base)
    if root is not None:
        env.update({name: str(Path(root) / name) for name in NNUNET_FOLDERS})
    env.update(settings or {})
    for name, value in ({"nnUNet_compile": "f"} if defaults is None else defaults).items():
        env.setdefault(name, value)
    return env


def print_line(message: str) -> None:
    """Prints ``message`` at once (the default log of :func:`run_command`)."""
    print(message, flush=True)


def run_command(command: Sequence[str], env: Mapping[str, str], log: Callable[[str], None] = print_line,
                step: Optional[str] = None) -> float:
    """Runs ``command`` (its first word resolved by :func:`console_command`) with its output streamed, after
    logging ``$ command``; raises ``CalledProcessError`` when it fails. Returns its wall time (s). ``step``: the
    command is announced as ``=== step`` and its time logged as ``=== step: done in N s``."""
    if step is not None:
        log(f"\n=== {step}")
    log("$ " + " ".join(map(str, command)))
    start = time.monotonic()
    subprocess.run([console_command(str(command[0])), *map(str, command[1:])], env=dict(env), check=True)
    seconds = time.monotonic() - start
    if step is not None:
        log(f"=== {step}: done in {seconds:.0f} s")
    return seconds
