"""Builds for the purgatory tests: the purgatory's own C compiled for the host (a shared
object called through ctypes) and the real blob built into a scratch directory."""

from __future__ import annotations

import ctypes
import platform
import shutil
import subprocess
from pathlib import Path

REPO = Path(__file__).resolve().parents[2]
SOURCE = REPO / "purgatory" / "x86_64"
HARNESS = Path(__file__).resolve().parent / "purgatory_host" / "host.c"


def host_compiler() -> str:
    cc = shutil.which("gcc") or shutil.which("cc")
    if cc is None:  # a clear failure, not a skip: make installs gcc
        raise RuntimeError("no host C compiler (gcc); `make venv` installs it")
    return cc


def build_host_library(out_dir: Path) -> ctypes.CDLL:
    """purgatory.c + sha256.c + the harness as one shared object, warnings as errors."""
    lib = out_dir / "libpurgatory_host.so"
    cmd = [
        host_compiler(),
        "-std=gnu11",
        "-O2",
        "-Wall",
        "-Wextra",
        "-Werror",
        "-shared",
        "-fPIC",
        f"-I{SOURCE}",
        str(HARNESS),
        str(SOURCE / "purgatory.c"),
        str(SOURCE / "sha256.c"),
        "-o",
        str(lib),
    ]
    subprocess.run(cmd, check=True, capture_output=True, text=True)
    dll = ctypes.CDLL(str(lib))
    u8p = ctypes.POINTER(ctypes.c_uint8)
    dll.host_sha256.argtypes = [ctypes.c_void_p, ctypes.c_size_t, u8p]
    dll.host_sha256.restype = None
    dll.host_sha256_chunked.argtypes = [ctypes.c_void_p, ctypes.c_size_t, ctypes.c_size_t, u8p]
    dll.host_sha256_chunked.restype = None
    dll.host_verify.argtypes = [ctypes.c_void_p, ctypes.POINTER(ctypes.c_uint32)]
    dll.host_verify.restype = ctypes.c_int
    dll.host_elfcorehdr_ok.argtypes = [ctypes.c_void_p, ctypes.c_uint64]
    dll.host_elfcorehdr_ok.restype = ctypes.c_int
    dll.host_main.argtypes = [
        ctypes.c_void_p,
        ctypes.c_char_p,
        ctypes.c_size_t,
        ctypes.POINTER(ctypes.c_uint64),
    ]
    dll.host_main.restype = ctypes.c_int
    dll.host_layout.argtypes = [ctypes.c_char_p]
    dll.host_layout.restype = ctypes.c_size_t
    return dll


def address_of(buffer: bytearray) -> int:
    """The address of a bytearray's storage (valid while it is alive and not resized)."""
    return ctypes.addressof((ctypes.c_char * len(buffer)).from_buffer(buffer))


def is_x86_64_host() -> bool:
    return platform.machine() in ("x86_64", "AMD64")


def build_blob(out_dir: Path) -> Path:
    """The real blob, built by purgatory/x86_64/Makefile into ``out_dir``."""
    subprocess.run(
        ["make", "-s", "-C", str(SOURCE), f"O={out_dir}"],
        check=True,
        capture_output=True,
        text=True,
    )
    return out_dir / "purgatory.bin"
