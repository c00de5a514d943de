"""A fast BLAS for MLX's CPU matrix multiplies on Linux, loaded before MLX.

The `mlx[cpu]` wheel links a reference BLAS (a few GFLOP/s). MLX calls `cblas_sgemm` (and
`cblas_dgemm`, `cblas_cgemm`) through the dynamic linker, so a library that exports them, loaded
with RTLD_GLOBAL *before* `import mlx`, takes over every GEMM. Where it comes from, first found:

1. `MLX_RSG_BLAS=/path/lib.so`: any library exporting `cblas_sgemm` (a system OpenBLAS, MKL's
   `libmkl_rt.so`); `MLX_RSG_BLAS=none` keeps the reference BLAS;
2. `scipy-openblas32`, a dependency of mlx-rsg on Linux: OpenBLAS built for every x86_64 /
   aarch64 core type, the kernels picked for this CPU when it loads. It prefixes its symbols
   (`scipy_cblas_sgemm`), so a three-function C shim that exports the plain names is compiled
   once with the system C compiler (`$CC`, `cc`, `gcc` or `clang`) into the user cache;
3. MKL from PyPI (`pip install mkl`, ~1 GB) when it is in this environment: no compiler needed;
4. a system OpenBLAS (Debian/Ubuntu `libopenblas0-pthread`, Fedora `openblas`).

`mlx_rsg/__init__.py` imports this module first. Nothing here imports mlx at import time;
`gemm_gflops` and `warn_if_slow` do, once MLX is loaded. If the process imported mlx before
mlx_rsg (what most notebooks do), nothing can replace the BLAS any more — the dynamic linker
bound MLX's GEMMs to its wheel's library, which comes first in the search order — so the import
prints one line saying so and how to fix it.
"""

from __future__ import annotations

import ctypes
import glob
import hashlib
import os
import shutil
import subprocess
import sys
import tempfile
from dataclasses import dataclass, field
from pathlib import Path

SLOW_GFLOPS = 15.0  # a reference BLAS runs at 2-6 GFLOP/s, a real one at 30-200 on one core and up

_SYSTEM_OPENBLAS = (
    "/usr/lib/x86_64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib/aarch64-linux-gnu/openblas-pthread/libopenblas.so.0",
    "/usr/lib64/libopenblas.so.0",
)
# The cblas GEMMs MLX calls, each forwarded to scipy-openblas32's prefixed symbol. cgemm takes its
# complex alpha and beta by pointer.
_SHIM_SOURCE = "typedef int I;\ntypedef const void *P;\n" + "".join(
    f"extern void scipy_cblas_{g}(I, I, I, I, I, I, {t}, P, I, P, I, {t}, void *, I);\n"
    f"void cblas_{g}(I o, I ta, I tb, I m, I n, I k, {t} al, P a, I lda, P b, I ldb,\n"
    f"    {t} be, void *c, I ldc) {{\n"
    f"  scipy_cblas_{g}(o, ta, tb, m, n, k, al, a, lda, b, ldb, be, c, ldc);\n}}\n"
    for g, t in (("sgemm", "float"), ("dgemm", "double"), ("cgemm", "P"))
)


@dataclass
class Loaded:
    """The BLAS MLX's GEMMs run on."""

    name: str  # e.g. "OpenBLAS 0.3.34 (scipy-openblas32)"
    path: str  # the library that implements the GEMMs
    lib: ctypes.CDLL = field(repr=False)
    prefix: str = ""  # symbol prefix of its OpenBLAS control functions ("scipy_" or "")


LOADED: Loaded | None = None
ERRORS: list[str] = []  # why earlier sources were not used, for `mlx-rsg info` and the warning
_WARNED: list[bool] = []


def cache_dir() -> Path:
    """mlx-rsg's per-user cache: $MLX_RSG_CACHE, else $XDG_CACHE_HOME/mlx-rsg, ~/.cache/mlx-rsg."""
    if os.environ.get("MLX_RSG_CACHE"):
        return Path(os.environ["MLX_RSG_CACHE"])
    base = os.environ.get("XDG_CACHE_HOME") or os.path.join(os.path.expanduser("~"), ".cache")
    return Path(base) / "mlx-rsg"


def _c_compiler() -> list[str] | None:
    if os.environ.get("CC"):
        return os.environ["CC"].split()
    for name in ("cc", "gcc", "clang"):
        if shutil.which(name):
            return [name]
    return None


def build_shim(target: Path, out_dir: Path) -> Path:
    """The shim library exporting cblas_*gemm over scipy-openblas32's `target`, compiled once
    into `out_dir` (keyed by the target's path, size and mtime; written atomically). Raises
    RuntimeError with the reason when it cannot be built."""
    st = target.stat()
    key = f"{_SHIM_SOURCE}{target.resolve()}{st.st_size}{st.st_mtime_ns}"
    shim = out_dir / f"libmlx_rsg_cblas-{hashlib.sha256(key.encode()).hexdigest()[:16]}.so"
    if shim.is_file():
        return shim
    cc = _c_compiler()
    if cc is None:
        raise RuntimeError("no C compiler (cc, gcc or clang) to build the cblas shim")
    out_dir.mkdir(parents=True, exist_ok=True)
    with tempfile.TemporaryDirectory(dir=out_dir) as tmp:
        src, lib = Path(tmp) / "shim.c", Path(tmp) / shim.name
        src.write_text(_SHIM_SOURCE)
        cmd = [*cc, "-O2", "-shared", "-fPIC", str(src), str(target),
               f"-Wl,-rpath,{target.parent}", "-o", str(lib)]  # fmt: skip
        try:
            done = subprocess.run(cmd, capture_output=True, text=True, timeout=120)
        except (OSError, subprocess.TimeoutExpired) as e:
            raise RuntimeError(f"{cc[0]} failed: {e}") from None
        if done.returncode != 0:
            first = (done.stderr.strip().splitlines() or ["?"])[0]
            raise RuntimeError(f"{cc[0]} failed to build the cblas shim: {first}")
        os.replace(lib, shim)  # atomic: a concurrent process sees no file or a whole one
    return shim


def _scipy_openblas() -> Loaded:
    try:
        import scipy_openblas32
    except ImportError:
        raise RuntimeError("scipy-openblas32 is not installed") from None
    libdir = Path(scipy_openblas32.get_lib_dir())
    target = libdir / scipy_openblas32.get_library(fullname=True)
    shim = build_shim(target, cache_dir() / "blas")
    try:  # the shim's dependency (target) is loaded with it, into the global scope
        ctypes.CDLL(str(shim), mode=os.RTLD_GLOBAL)
        lib = ctypes.CDLL(str(target))
    except OSError as e:
        raise RuntimeError(f"{shim}: {e}") from None
    return Loaded(f"OpenBLAS (scipy-openblas32 {scipy_openblas32.__version__})", str(target),
                  lib, "scipy_")  # fmt: skip


def _library(path: str) -> Loaded:
    if not os.path.exists(path):
        raise RuntimeError(f"{path}: no such file")
    try:
        lib = ctypes.CDLL(path, mode=os.RTLD_GLOBAL)
    except OSError as e:
        raise RuntimeError(str(e)) from None
    if not hasattr(lib, "cblas_sgemm"):
        raise RuntimeError(f"{path}: does not export cblas_sgemm")
    if hasattr(lib, "openblas_get_config"):
        return Loaded("OpenBLAS", path, lib)
    if hasattr(lib, "MKL_Get_Max_Threads"):
        return Loaded("MKL", path, lib)
    return Loaded(Path(path).name, path, lib)


IMPORTED_LATE = "mlx was imported before mlx_rsg"


def preload() -> None:
    """Load the first usable BLAS (module docstring); record why others were not used."""
    global LOADED
    if not sys.platform.startswith("linux") or LOADED:
        return
    env = os.environ.get("MLX_RSG_BLAS")
    if env == "none":
        ERRORS.append("MLX_RSG_BLAS=none")
        return
    if "mlx.core" in sys.modules:
        _imported_late()
        return
    found = sorted(glob.glob(os.path.join(sys.prefix, "lib", "libmkl_rt.so*")))[:1]
    found += [p for p in _SYSTEM_OPENBLAS if os.path.exists(p)]
    sources = [lambda: _library(env)] if env else [_scipy_openblas]
    sources += [lambda p=p: _library(p) for p in found]
    for source in sources:
        try:
            LOADED = source()
            return
        except RuntimeError as e:
            ERRORS.append(str(e))
        except OSError as e:  # e.g. a read-only cache directory
            ERRORS.append(f"cannot build the cblas shim in {cache_dir() / 'blas'}: {e}")


def _imported_late() -> None:
    """MLX is loaded already, with the BLAS its wheel linked: the dynamic linker resolved its
    GEMMs to that library, and one loaded now would come after it. Say so, once, at import."""
    ERRORS.append(IMPORTED_LATE)
    import mlx.core as mx

    if mx.default_device() == mx.cpu:
        _WARNED.append(True)  # this line says it; loading a model does not say it again
        print(f"warning: {IMPORTED_LATE}, so MLX's CPU matrix multiplies run on the reference "
              "BLAS bundled with mlx[cpu] (~6 GFLOP/s instead of ~200); fix: import mlx_rsg "
              "before mlx, in a fresh process (restart the notebook's kernel)",
              file=sys.stderr, flush=True)  # fmt: skip


def describe() -> str:
    """One line: which BLAS MLX's CPU GEMMs use here, with the kernels OpenBLAS picked."""
    if sys.platform == "darwin":
        return "Accelerate (macOS)"
    if LOADED is None:
        return "the reference BLAS bundled with mlx[cpu]"
    core = corename()
    name = f"{LOADED.name}, {core} kernels" if core else LOADED.name
    return f"{name}: {LOADED.path}"


def corename() -> str | None:
    """The core type OpenBLAS chose its kernels for (e.g. SkylakeX, Haswell, NeoverseN1)."""
    fn = _control("openblas_get_corename")
    if fn is None:
        return None
    fn.restype = ctypes.c_char_p
    return fn().decode()


def _control(name: str):
    if LOADED is None:
        return None
    return getattr(LOADED.lib, LOADED.prefix + name, None)


def get_threads() -> int | None:
    fn = _control("openblas_get_num_threads") or _control("MKL_Get_Max_Threads")
    return None if fn is None else int(fn())


def set_threads(n: int) -> None:
    """Set the BLAS's thread count (OpenBLAS or MKL; no-op for others)."""
    fn = _control("openblas_set_num_threads") or _control("MKL_Set_Num_Threads")
    if fn is not None:
        fn(int(n))


def gemm_gflops(n: int = 512, repeats: int = 3) -> float:
    """Measured float32 GEMM speed of MLX's default device, best of `repeats` n^3 products."""
    import time

    import mlx.core as mx

    a, b = mx.random.normal((n, n)), mx.random.normal((n, n))
    mx.eval(a @ b)  # warm-up: first use of the kernel and the buffers
    best = float("inf")
    for _ in range(repeats):
        t = time.perf_counter()
        mx.eval(a @ b)
        best = min(best, time.perf_counter() - t)
    return 2 * n**3 / best / 1e9


def fix_hint() -> str:
    """What to do about a slow BLAS, from why ours was not loaded."""
    if "MLX_RSG_BLAS=none" in ERRORS:
        return "unset MLX_RSG_BLAS"
    if IMPORTED_LATE in ERRORS:
        return "import mlx_rsg before mlx, in a fresh process"
    if any("scipy-openblas32 is not installed" in e for e in ERRORS):
        return "pip install scipy-openblas32"
    if any("cannot build the cblas shim in" in e for e in ERRORS):
        return "set MLX_RSG_CACHE to a writable directory"
    if any("no C compiler" in e for e in ERRORS):
        return ("install a C compiler (apt install gcc) so mlx-rsg can build its OpenBLAS shim, "
                "or pip install mkl (~1 GB)")  # fmt: skip
    return "set MLX_RSG_BLAS=/path/to/libopenblas.so (or libmkl_rt.so)"


def warn_if_slow(log=None) -> float | None:
    """Once per process, before heavy work on the CPU: measure a small GEMM and print one
    warning line with the fix if it runs at reference-BLAS speed. Returns the GFLOP/s (None
    when not on the CPU or already checked)."""
    import mlx.core as mx

    if _WARNED or mx.default_device() != mx.cpu:
        return None
    _WARNED.append(True)
    gflops = gemm_gflops(n=384, repeats=2)
    # A real BLAS measured slow is most often a busy machine: the best of two more tries
    for _ in range(2 if LOADED is not None else 0):
        if gflops >= SLOW_GFLOPS:
            break
        gflops = max(gflops, gemm_gflops(n=384, repeats=2))
    if gflops < SLOW_GFLOPS:
        load, cores = os.getloadavg()[0], os.cpu_count() or 1
        if LOADED is not None and load >= cores:
            msg = (f"warning: MLX's CPU matrix multiplies run at {gflops:.1f} GFLOP/s on "
                   f"{describe()}: the cores are busy (load average {load:.1f} on {cores} "
                   "cores), so this command runs slower than it would alone")  # fmt: skip
        else:
            why = f" ({ERRORS[-1]})" if ERRORS else ""
            msg = (f"warning: MLX's CPU matrix multiplies run at {gflops:.1f} GFLOP/s on "
                   f"{describe()}{why}; everything will be 20-40x slower than it should. "
                   f"Fix: {fix_hint()}")  # fmt: skip
        (log or (lambda m: print(m, file=sys.stderr, flush=True)))(msg)
    return gflops


preload()
