"""Guest side of the ``segment-corrupt`` row: load kdumpd's own crash image with one
byte changed after the purgatory's digests were computed.

Runs inside the guest (``chroot /host``, the project's venv).  It uses kdumpd's own
pieces exactly as the ``segment`` back-end does (topology reader, the core's
elfcorehdr, the architecture's image builder, the ``kexec_load`` wrapper); the only
difference is the one flipped byte in the kernel or initrd buffer between building
the image and loading it, which the purgatory must catch at crash time.  The daemon
has no switch for this.

    python -m tests.e2e.segment_corrupt KERNEL INITRD CMDLINE {kernel,initrd,none} OUT.json
"""

from __future__ import annotations

import hashlib
import json
import sys
from pathlib import Path

from kdumpd.arch import get_arch
from kdumpd.core.image import CrashImage
from kdumpd.core.segment import LoaderInputs, SegmentKind
from kdumpd.system.kexec import KEXEC_ON_CRASH, LinuxKexec
from kdumpd.system.topologyreader import read_topology


def main(argv: list[str]) -> int:
    kernel_path, initrd_path, cmdline, target, out = argv
    topology = read_topology("/")
    arch = get_arch(topology.arch)
    image = CrashImage.for_topology(arch, topology, arch.elfcorehdr_capacity(topology))
    kernel = bytearray(Path(kernel_path).read_bytes())
    initrd = bytearray(Path(initrd_path).read_bytes())
    inputs = LoaderInputs(
        kernel=memoryview(kernel),
        kernel_name=kernel_path,
        initrd=memoryview(initrd),
        cmdline=cmdline,
        boot_params=Path("/sys/kernel/boot_params/data").read_bytes(),
    )
    builder = arch.image_builder()
    assert builder is not None
    seg_image = builder.build(inputs, topology, image.elfcorehdr)
    plan = seg_image.plan
    segments = {s.kind: s for s in plan.segments}
    report: dict[str, object] = {
        "entry": plan.entry,
        "segments": [
            {"kind": str(s.kind), "mem": s.mem, "memsz": s.memsz, "bufsz": len(s.buf)}
            for s in plan.segments
        ],
    }
    if target != "none":
        kind = SegmentKind.KERNEL if target == "kernel" else SegmentKind.INITRD
        buf = segments[kind].buf  # a view of `kernel`/`initrd`: flip through the view
        view = memoryview(buf).cast("B")
        before = hashlib.sha256(view).hexdigest()
        offset = len(view) // 2
        view[offset] ^= 0x01
        report.update(
            corrupted=str(kind),
            offset=offset,
            mem=segments[kind].mem + offset,
            sha256_before=before,
            sha256_after=hashlib.sha256(view).hexdigest(),
        )
    # the purgatory's regions, as its header holds them (index -> segment start)
    purgatory = getattr(seg_image, "purgatory", None)
    if purgatory is not None:
        report["regions"] = [
            {"index": i, "start": r.start, "length": r.length, "flags": int(r.flags)}
            for i, r in enumerate(purgatory.regions())
        ]
    specs = [(s.buf, s.mem, s.memsz) for s in plan.segments]
    LinuxKexec().load(plan.entry, specs, KEXEC_ON_CRASH | plan.arch_flag)
    report["loaded"] = Path("/sys/kernel/kexec_crash_loaded").read_text().strip()
    Path(out).write_text(json.dumps(report))
    return 0


if __name__ == "__main__":
    sys.exit(main(sys.argv[1:]))
