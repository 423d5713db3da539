"""Start-up hook: lets the stock ``nnUNetv2_*`` commands find HPN's planner, normalization and trainers.

``nnunet_hpn_startup.pth`` (installed at the top of site-packages by ``pip install``) imports this module in every
Python process of the environment, including nnU-Net's spawned worker processes. It costs a few milliseconds and
imports nothing heavy. It

1. appends the trainer shim folder (:data:`nnunet_hpn.EXT_TRAINER_DIR`) to ``nnUNet_extTrainer``, keeping the
   user's own entries (nnU-Net's official trainer hook, inherited by every child process);
2. installs a post-import hook: right after nnU-Net has executed the two modules whose folders it scans by name,
   HPN's classes are added to their namespaces, so ``recursive_find_python_class`` finds them:

   - ``nnunetv2.experiment_planning.plan_and_preprocess_api``  → ``HPNPlanner``, ``HPNResDSNPlanner`` (``-pl``)
   - ``nnunetv2.preprocessing.normalization.default_normalization_schemes`` → ``HPNCTNormalization``
3. prints bad input that HPN's classes meet inside a stock command (an uncaught ``HPNInputError``, e.g. a dataset
   with one channel planned with ``-pl HPNPlanner``) as one error line instead of a traceback.

Nothing is written into nnU-Net's files; uninstalling the package removes the hook. Set ``NNUNET_HPN_DISABLE_HOOK=1``
to switch it off. The hook never raises: a failure prints one warning line and leaves nnU-Net untouched.
"""
import importlib.abc
import importlib.machinery
import os
import sys
from types import ModuleType
from typing import Callable, Dict, Optional

from nnunet_hpn import EXT_TRAINER_DIR



def _register_planners(module: ModuleType) -> None:
    from nnunet_hpn.nnunet.planners.hpn_planner import HPNPlanner, HPNResDSNPlanner, HPNStarPlanner

    module.HPNPlanner = HPNPlanner
    module.HPNResDSNPlanner = HPNResDSNPlanner
    module.HPNStarPlanner = HPNStarPlanner


def _register_normalization(module: ModuleType) -> None:
    from nnunet_hpn.nnunet.normalization import HPNCTNormalization

    module.HPNCTNormalization = HPNCTNormalization


#: module name → registration to run right after nnU-Net has executed that module
REGISTRATIONS: Dict[str, Callable[[ModuleType], None]] = {
    "nnunetv2.experiment_planning.plan_and_preprocess_api": _register_planners,
    "nnunetv2.preprocessing.normalization.default_normalization_schemes": _register_normalization,
}


def _run_registration(name: str, module: ModuleType) -> None:
    try:
        REGISTRATIONS[name](module)
    except Exception as e:  # never break nnU-Net because of the plugin
        print(f"nnunet-hpn: could not register HPN classes in {name}: {type(e).__name__}: {e}", file=sys.stderr)


class _LoaderWithRegistration(importlib.abc.Loader):
    """Delegates to the real loader, then runs the registration for the module."""

    def __init__(self, loader: importlib.abc.Loader, name: str) -> None:
        self._loader = loader
        self._name = name

    def create_module(self, spec: importlib.machinery.ModuleSpec) -> Optional[ModuleType]:
        return self._loader.create_module(spec)

    def exec_module(self, module: ModuleType) -> None:
        self._loader.exec_module(module)
        _run_registration(self._name, module)

    def __getattr__(self, item: str):  # get_source, get_filename, ... used by inspect / pkgutil
        return getattr(self._loader, item)


class _PostImportFinder(importlib.abc.MetaPathFinder):
    """Finds nothing itself; wraps the loader of the modules listed in :data:`REGISTRATIONS`."""

    def find_spec(self, fullname: str, path=None, target=None):
        if fullname not in REGISTRATIONS:
            return None
        for finder in sys.meta_path:
            if finder is self or not hasattr(finder, "find_spec"):
                continue
            spec = finder.find_spec(fullname, path, target)
            if spec is not None:
                if spec.loader is not None:
                    spec.loader = _LoaderWithRegistration(spec.loader, fullname)
                return spec
        return None


def _one_line_input_errors(previous: Callable) -> Callable:
    """``sys.excepthook`` that prints an uncaught :class:`~nnunet_hpn.errors.HPNInputError` (bad input met by HPN's
    planner or trainer inside a stock ``nnUNetv2_*`` command) as one ``<command>: error: <message>`` line instead of a
    traceback; every other exception goes to ``previous``. Python's exit status stays 1."""
    def hook(exc_type, exc, traceback) -> None:
        from nnunet_hpn.errors import HPNInputError

        if isinstance(exc_type, type) and issubclass(exc_type, HPNInputError):
            print(f"{os.path.basename(sys.argv[0]) or 'python'}: error: {exc}", file=sys.stderr)
        else:
            previous(exc_type, exc, traceback)

    hook.hpn_one_line_input_errors = True
    return hook


def _append_ext_trainer_dir() -> None:
    entries = [p for p in os.environ.get("nnUNet_extTrainer", "").split(os.pathsep) if p]
    if EXT_TRAINER_DIR not in entries:
        os.environ["nnUNet_extTrainer"] = os.pathsep.join(entries + [EXT_TRAINER_DIR])


def install() -> None:
    """Idempotent: sets the trainer path and the post-import hook (or registers at once if already imported)."""
    if os.environ.get("NNUNET_HPN_DISABLE_HOOK", "").lower() in ("1", "true", "yes"):
        return
    _append_ext_trainer_dir()
    if not any(isinstance(f, _PostImportFinder) for f in sys.meta_path):
        sys.meta_path.insert(0, _PostImportFinder())
    if not getattr(sys.excepthook, "hpn_one_line_input_errors", False):
        sys.excepthook = _one_line_input_errors(sys.excepthook)
    for name in REGISTRATIONS:
        if name in sys.modules:
            _run_registration(name, sys.modules[name])


try:
    install()
except Exception as _e:  # pragma: no cover - defensive: a .pth hook must never stop the interpreter
    print(f"nnunet-hpn: start-up hook failed: {type(_e).__name__}: {_e}", file=sys.stderr)
