"""`kdumpd segments [--sysroot DIR] [--kernel K] [--initrd I] [--cmdline C] --out DIR`.

Builds the complete crash image the ``segment`` back-end would load for the machine
described by the sysroot (elfcorehdr, purgatory, boot_params, initrd, kernel; placed
and validated exactly as before a ``kexec_load``) and writes it without loading
anything: one file per segment (``NN-KIND.bin``, the ``bufsz`` bytes kexec copies)
and ``manifest.json``::

    {"entry": "0x...", "flags": "0x3e0001", "kernel": "...", "initrd": "...",
     "segments": [{"kind": "elfcorehdr", "mem": "0x...", "memsz": N, "bufsz": N,
                   "sha256": "...", "entry": null, "file": "00-elfcorehdr.bin"}, ...]}

Kernel, initrd and command line default to what the daemon resolves (``[kexec]``
defaults below the sysroot); ``--kernel``/``--initrd`` paths are taken as given.
Exit status: 0 ok, 1 bad input / no room (one line on stderr), 2 usage.
"""

from __future__ import annotations

import argparse
import json
from pathlib import Path

from kdumpd.commands.common import add_sizing_arguments, add_sysroot_arguments, build_image
from kdumpd.core.errors import InputError
from kdumpd.core.segment import Segment, SegmentKind
from kdumpd.daemon.backends.file import KexecFiles, default_files
from kdumpd.daemon.backends.segment import SegmentBackend
from kdumpd.system.kexec import KEXEC_ON_CRASH, MappedFile

NAME = "segments"
HELP = "write every segment of the kexec_load crash image and a JSON manifest (no load)"


def add_arguments(parser: argparse.ArgumentParser) -> None:
    add_sysroot_arguments(parser, "sysfs/procfs")
    parser.add_argument("--kernel", metavar="FILE", help="bzImage (default: the daemon's)")
    parser.add_argument("--initrd", metavar="FILE", help="initrd (default: the daemon's)")
    parser.add_argument("--no-initrd", action="store_true", help="load no initrd")
    parser.add_argument(
        "--cmdline", metavar="ARGS", help="capture arguments (default: from /proc/cmdline)"
    )
    parser.add_argument("--purgatory", metavar="FILE", help="purgatory blob (default: built one)")
    add_sizing_arguments(parser)
    parser.add_argument("--out", required=True, metavar="DIR", help="directory to write into")


class _NoSyscalls:
    def file_load(self, kernel_fd: int, initrd_fd: int, cmdline: bytes, flags: int) -> None:
        raise AssertionError("kdumpd segments never loads")

    def load(self, entry: int, segments: object, flags: int) -> None:
        raise AssertionError("kdumpd segments never loads")


def _write_segment(path: Path, seg: Segment, source: MappedFile | None) -> None:
    """Write ``seg.buf``; a mapped-file segment (the tail of ``source``) is copied
    through the descriptor, so a file truncated meanwhile is a one-line error, not a
    SIGBUS from touching the mapping."""
    if source is None:
        path.write_bytes(seg.buf)
        return
    pos = source.size - seg.bufsz
    with path.open("wb") as out:
        while pos < source.size:
            chunk = source.pread(min(source.CHUNK, source.size - pos), pos)
            if not chunk:
                break
            out.write(chunk)
            pos += len(chunk)
    if pos < source.size or source.changed():  # the manifest's digest would not match
        raise InputError(source.path, "changed or truncated while being written out")


def run(args: argparse.Namespace) -> int:
    topology, image = build_image(args)
    resolved = default_files(args.sysroot, cmdline=args.cmdline or "")
    files = KexecFiles(
        kernel=args.kernel or resolved.kernel,
        initrd=None if args.no_initrd else (args.initrd or resolved.initrd),
        cmdline=resolved.cmdline,
    )
    blob = Path(args.purgatory).read_bytes() if args.purgatory else b""
    backend = SegmentBackend(_NoSyscalls(), files, args.sysroot, purgatory=blob)
    seg_image = backend.prepare(image, topology)
    seg_image.refresh()
    plan = seg_image.plan
    out = Path(args.out)
    out.mkdir(parents=True, exist_ok=True)
    entries = seg_image.manifest()
    assert backend.prepared is not None
    maps = backend.prepared.maps  # the kernel's, then the initrd's when there is one
    sources = {SegmentKind.KERNEL: maps[0], SegmentKind.INITRD: maps[-1] if len(maps) > 1 else None}
    for i, (seg, entry) in enumerate(zip(plan.segments, entries, strict=True)):
        name = f"{i:02d}-{seg.kind}.bin"
        _write_segment(out / name, seg, sources.get(seg.kind))
        entry["file"] = name
    manifest = {
        "entry": f"{plan.entry:#x}",
        "flags": f"{KEXEC_ON_CRASH | plan.arch_flag:#x}",
        "kernel": files.kernel,
        "initrd": files.initrd,
        "segments": entries,
    }
    (out / "manifest.json").write_text(json.dumps(manifest, indent=2) + "\n")
    total = sum(s.memsz for s in plan.segments)
    low = min(s.mem for s in plan.segments)
    high = max(s.mem + s.memsz for s in plan.segments)
    print(
        f"segments: {len(plan.segments)} segments, {total / (1 << 20):.1f} MiB in "
        f"{low:#x}-{high - 1:#x}, entry {plan.entry:#x} -> {out}"
    )
    return 0
