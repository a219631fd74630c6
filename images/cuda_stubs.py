"""Stand-ins for the CUDA libraries that PyPI's torch links against, for the CPU trainer image.

Where it sits: run once while images/trainer.Dockerfile builds (build stage, after the CPU lock is
installed), never at run time. PyPI serves only the CUDA build of torch for Linux x86_64; its shared
libraries name libcudart, libcublas, libcudnn, libnccl, ... as DT_NEEDED, so `import torch` fails unless
those ~2.7 GB of nvidia-* packages (plus 0.7 GB of triton) are installed, although a CPU pod never calls
them. This script reads which CUDA symbols torch's libraries import (binutils' `nm -D`, `readelf -d`) and
compiles, per CUDA soname, a small library that defines each of them with the symbol versions torch asks
for. Every function reports failure (cudaErrorNoDevice, 100): `torch.cuda.is_available()` is False and
torch runs on CPU as it does on a machine without a GPU driver. The few calls whose result is used
before its error is checked (error strings, the device count, fat-binary registration at load time)
get answers of the right type.

    python images/cuda_stubs.py SITE_PACKAGES OUT_DIR
"""
from __future__ import annotations

import re
import subprocess
import sys
from collections import defaultdict
from pathlib import Path

# The C runtime and compiler libraries torch also links against: real, never stubbed.
SYSTEM = {"libc.so.6", "libm.so.6", "libdl.so.2", "libpthread.so.0", "librt.so.1", "libstdc++.so.6",
          "libgcc_s.so.1", "ld-linux-x86-64.so.2", "libgomp.so.1"}
# Unversioned imports are attributed by prefix; versioned ones name their library themselves.
PREFIXES = [("cuFile", "libcufile.so.0"), ("cusparseLt", "libcusparseLt.so.0"), ("nccl", "libnccl.so.2"),
            ("nvshmem", "libnvshmem_host.so.3"), ("cuda", "libcudart.so.13"), ("cu", "libcuda.so.1")]
VERSION_OWNERS = {"NVSHMEM": "libnvshmem_host.so.3"}
NO_DEVICE = 100  # cudaErrorNoDevice; any non-zero status is an error for every CUDA library

MESSAGE = "CUDA is not available in this CPU image"
SPECIAL = {
    # Written before the caller looks at the status.
    "cudaGetDeviceCount": "int {name}(int *n) {{ if (n) *n = 0; return " + str(NO_DEVICE) + "; }}",
    "cuGetErrorString": "int {name}(int e, const char **s) {{ (void)e; if (s) *s = MSG; return 0; }}",
    "cuGetErrorName": "int {name}(int e, const char **s) {{ (void)e; if (s) *s = MSG; return 0; }}",
    "cuptiGetResultString": "int {name}(int e, const char **s) {{ (void)e; if (s) *s = MSG; return 0; }}",
    # Called by every CUDA object file's constructor when torch loads: hand back a handle.
    "__cudaRegisterFatBinary": "void **{name}(void *b) {{ static void *h[4]; (void)b; return h; }}",
}
RETURNS_STRING = re.compile(r"(GetErrorString|GetErrorName|GetStatusString|GetStatusName|GetLastError)$")


def _run(*cmd: str) -> str:
    return subprocess.run(cmd, capture_output=True, text=True, check=True).stdout


def torch_libraries(site: Path) -> list[Path]:
    libs = sorted((site / "torch" / "lib").glob("*.so*")) + sorted((site / "torch").glob("_C*.so"))
    if not libs:
        raise SystemExit(f"{site}: no torch/lib/*.so (is torch installed in this site-packages?)")
    return libs


def cuda_imports(libs: list[Path]) -> dict[str, dict[str, str | None]]:
    """{soname: {symbol: version or None}} for every CUDA symbol torch imports and does not define."""
    needed: set[str] = set()
    defined: set[str] = set()
    imported: set[str] = set()
    for lib in libs:
        needed |= set(re.findall(r"\(NEEDED\)\s+Shared library: \[(.+?)\]", _run("readelf", "-d", str(lib))))
        defined |= {ln.split()[-1].split("@")[0] for ln in _run("nm", "-D", "--defined-only", str(lib)).splitlines()
                    if ln.strip()}
        imported |= {ln.split()[-1] for ln in _run("nm", "-D", "--undefined-only", str(lib)).splitlines()
                     if ln.strip()}
    own = {lib.name for lib in libs}
    sonames = sorted(needed - SYSTEM - own)
    out: dict[str, dict[str, str | None]] = {s: {} for s in sonames}
    for sym in imported:
        name, _, version = sym.partition("@")
        if name in defined:
            continue
        owner = VERSION_OWNERS.get(version, version) if version else \
            next((lib for prefix, lib in PREFIXES if name.startswith(prefix)), None)
        if owner in out:
            out[owner][name] = version or None
    return out


def c_source(symbols: dict[str, str | None]) -> str:
    lines = [f'static const char MSG[] = "{MESSAGE}";']
    for name in sorted(symbols):
        if name in SPECIAL:
            lines.append(SPECIAL[name].format(name=name))
        elif RETURNS_STRING.search(name):
            lines.append(f"const char *{name}(void) {{ return MSG; }}")
        else:
            lines.append(f"int {name}(void) {{ return {NO_DEVICE}; }}")
    return "\n".join(lines) + "\n"


def version_script(symbols: dict[str, str | None]) -> str | None:
    """Versioned imports (sym@libcudart.so.13) bind only to a definition in that version node; an
    unversioned import binds to the default version, so it joins the library's (first) node."""
    nodes: dict[str, list[str]] = defaultdict(list)
    versions = sorted({v for v in symbols.values() if v})
    if not versions:
        return None
    for name, version in symbols.items():
        nodes[version or versions[0]].append(name)
    return "".join(f"{v} {{ global: {'; '.join(sorted(n))}; local: *; }};\n" for v, n in sorted(nodes.items()))


def build(site: Path, out: Path) -> list[Path]:
    out.mkdir(parents=True, exist_ok=True)
    built = []
    for soname, symbols in cuda_imports(torch_libraries(site)).items():
        stem = out / soname
        src, ver = stem.with_suffix(stem.suffix + ".c"), stem.with_suffix(stem.suffix + ".map")
        src.write_text(c_source(symbols))
        script = version_script(symbols)
        if script:
            ver.write_text(script)
        subprocess.run(["cc", "-shared", "-fPIC", "-O1", "-s", f"-Wl,-soname,{soname}",
                        *([f"-Wl,--version-script={ver}"] if script else []), "-o", str(stem), str(src)],
                       check=True)
        src.unlink()
        ver.unlink(missing_ok=True)
        built.append(stem)
        print(f"{soname}: {len(symbols)} symbols")
    return built


if __name__ == "__main__":
    if len(sys.argv) != 3:
        raise SystemExit(__doc__)
    build(Path(sys.argv[1]), Path(sys.argv[2]))
