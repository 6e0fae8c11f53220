"""``kdumpctl``-compatible shim in front of kdumpd.

Sub-commands and exit codes follow kdump-utils' ``kdumpctl`` (docs/kernel-interfaces.md
§7).  Messages go to stderr as ``kdump: <msg>``; only ``estimate`` and
``get-default-crashkernel`` write to stdout.

* ``start``/``stop``/``restart``/``reload`` ask the daemon over D-Bus (``Load``,
  ``Unload``, ``Reload``).  kdumpd never unloads to reload: ``restart`` and ``reload``
  are one ``Reload`` (one load, no window without a crash kernel).
* ``status`` uses the daemon's ``State`` when it is reachable and the kernel's
  ``/sys/kernel/kexec_crash_loaded`` otherwise (and the kernel wins when it says 0).
  Exit 0 operational, 3 not operational (also when the sysfs node is missing).
* ``showmem`` reads ``/sys/kernel/kexec_crash_size``; ``estimate`` and
  ``get-default-crashkernel`` compute as kdump-utils does.
* ``rebuild``, ``propagate``, ``reset-crashkernel`` and ``setup-crypttab`` belong to
  kdump-utils (initramfs, ssh keys, boot loader): they are delegated to the program
  named by ``$KDUMPD_UPSTREAM_KDUMPCTL`` when it is executable, else refused with one
  line and exit 1.

Options before the command (not in kdump-utils; for tests and containers):
``--sysroot DIR`` (env ``KDUMPCTL_SYSROOT``), ``--bus-address ADDR`` (default: the
system bus, honouring ``DBUS_SYSTEM_BUS_ADDRESS``).
"""

from __future__ import annotations

import os
import platform
import sys
from collections.abc import Callable, Sequence
from dataclasses import dataclass, field
from pathlib import Path

from kdumpd.core.errors import InputError, KdumpdError, UnsupportedError
from kdumpd.interfaces.dbusclient import (
    DaemonAccessDenied,
    DaemonError,
    DaemonUnreachable,
    call,
    get_state,
)
from kdumpd.system.kexecsysfs import KEXEC_CRASH_SIZE, read_crash_loaded, read_crash_size
from kdumpd.system.sysroot import Sysroot

EXIT_OK = 0
EXIT_FAILURE = 1
EXIT_NOT_OPERATIONAL = 3

COMMANDS = (
    "estimate",
    "start",
    "stop",
    "status",
    "restart",
    "reload",
    "rebuild",
    "reset-crashkernel",
    "propagate",
    "showmem",
    "test",
    "setup-crypttab",
    "get-default-crashkernel",
)
USAGE = f"Usage: kdumpctl {{{'|'.join(COMMANDS)}}}"
OPERATIONAL_STATES = frozenset({"loaded", "updating", "degraded"})

MiB = 1 << 20
GiB = 1 << 30
_UNITS = {"K": 1 << 10, "M": MiB, "G": GiB, "T": 1 << 40, "P": 1 << 50, "E": 1 << 60}


def info(msg: str) -> None:
    print(f"kdump: {msg}", file=sys.stderr)


def warn(msg: str) -> None:
    print(f"kdump: WARNING: {msg}", file=sys.stderr)


@dataclass
class Context:
    sysroot: Path
    bus_address: str | None
    arch: str
    root: Sysroot = field(init=False)

    def __post_init__(self) -> None:
        self.root = Sysroot(self.sysroot)

    def path(self, absolute: str) -> Path:
        return Path(self.root.path(absolute))

    def read(self, absolute: str) -> str | None:
        return self.root.read_text(absolute)


# -- crashkernel= arithmetic (kdump-lib.sh) ---------------------------------------


def parse_size(text: str, source: str = "crashkernel") -> int:
    text = text.strip()
    if not text:
        raise InputError(source, "empty size")
    unit = text[-1].upper()
    if unit in _UNITS:
        number, mult = text[:-1], _UNITS[unit]
    else:
        number, mult = text, 1
    if not number.isdigit():
        raise InputError(source, f"bad size {text!r}")
    return int(number) * mult


def format_size(size: int) -> str:
    for unit in ("T", "G", "M"):
        if size and size % _UNITS[unit] == 0:
            return f"{size // _UNITS[unit]}{unit}"
    return f"{-(-size // MiB)}M"


def parse_crashkernel_ranges(spec: str) -> list[tuple[int, int | None, int]]:
    """``start-[end]:size,...`` into ``(start, end or None, size)`` in bytes."""
    out: list[tuple[int, int | None, int]] = []
    for item in spec.split(","):
        rng, sep, size = item.partition(":")
        start, dash, end = rng.partition("-")
        if not sep or not dash:
            raise InputError("crashkernel", f"bad range {item!r} (want START-[END]:SIZE)")
        out.append((parse_size(start), parse_size(end) if end else None, parse_size(size)))
    return out


def render_crashkernel_ranges(ranges: list[tuple[int, int | None, int]]) -> str:
    return ",".join(
        f"{format_size(a)}-{format_size(b) if b is not None else ''}:{format_size(s)}"
        for a, b, s in ranges
    )


def add_to_ranges(spec: str, delta: int) -> str:
    if delta == 0:
        return spec
    return render_crashkernel_ranges(
        [(a, b, s + delta) for a, b, s in parse_crashkernel_ranges(spec)]
    )


def default_crashkernel(
    arch: str,
    dump_mode: str = "kdump",
    *,
    memory_encryption: bool = False,
    page_size: int = 4096,
    smmu: bool = False,
    mlx5: bool = False,
    nr_cpus: int = 1,
) -> str:
    """kdump-utils' recommended ``crashkernel=`` value for ``arch``."""
    if arch in ("x86_64", "s390x"):
        return add_to_ranges("2G-64G:256M,64G-:512M", 64 * MiB if memory_encryption else 0)
    if arch == "aarch64":
        delta = 0
        if page_size == 65536:
            delta += 100 * MiB
            if smmu:
                delta += 384 * MiB
        if mlx5:
            delta += (200 if page_size == 65536 else 150) * MiB
        return add_to_ranges("2G-4G:256M,4G-64G:320M,64G-:576M", delta)
    if arch == "ppc64le":
        if dump_mode == "fadump":
            spec = (
                "4G-16G:768M,16G-64G:1G,64G-128G:2G,128G-1T:4G,1T-2T:6G,2T-4T:12G,"
                "4T-8T:20G,8T-16T:36G,16T-32T:64G,32T-64T:128G,64T-:180G"
            )
        else:
            spec = "2G-4G:384M,4G-16G:512M,16G-64G:1G,64G-128G:2G,128G-:4G"
        return add_to_ranges(spec, nr_cpus * MiB)
    raise UnsupportedError(f"no default crashkernel for architecture {arch}")


def crashkernel_size_for(spec: str, system_size: int) -> int:
    """The size ``spec`` reserves on a machine with ``system_size`` bytes (0: none)."""
    for start, end, size in parse_crashkernel_ranges(spec):
        if system_size >= start and (end is None or system_size < end):
            return size
    return 0


def system_size(ctx: Context) -> int:
    """Sum of ``System RAM`` in ``/proc/iomem``, rounded up to 128 MiB
    (kdump-lib.sh ``get_system_size``)."""
    from kdumpd.core.iomem import parse_iomem

    source = str(ctx.path("/proc/iomem"))
    text = ctx.read("/proc/iomem")
    if text is None:
        raise InputError(source, "missing")
    total = sum(r.end - r.start + 1 for r in parse_iomem(text, source) if "System RAM" in r.name)
    if total == 0:
        raise InputError(source, "no System RAM ranges")
    step = 128 * MiB
    return -(-total // step) * step


def _detect_default(ctx: Context, dump_mode: str) -> str:
    smmu = any("smmu" in p.name for p in _listdir(ctx.path("/sys/class/iommu")))
    mlx5 = ctx.path("/sys/bus/pci/drivers/mlx5_core").exists()
    return default_crashkernel(
        ctx.arch,
        dump_mode,
        page_size=os.sysconf("SC_PAGE_SIZE"),
        smmu=smmu,
        mlx5=mlx5,
    )


def _listdir(p: Path) -> list[Path]:
    try:
        return list(p.iterdir())
    except OSError:
        return []


# -- kernel facts ---------------------------------------------------------------


def sysfs_crash_loaded(ctx: Context) -> bool | None:
    """``/sys/kernel/kexec_crash_loaded`` (or fadump ``registered``); None: missing."""
    if (ctx.read("/sys/kernel/fadump/enabled") or "").strip() == "1":
        reg = ctx.read("/sys/kernel/fadump/registered")
        return None if reg is None else reg.strip() == "1"
    return read_crash_loaded(ctx.root)


def crash_size(ctx: Context) -> int:
    size = read_crash_size(ctx.root)
    if size is None:
        source = ctx.root.path(KEXEC_CRASH_SIZE[0])
        raise InputError(source, "missing (kernel without kexec support?)")
    return size


def kernel_image_size(path: Path) -> int:
    """Memory the kernel needs: the x86 boot protocol's ``init_size`` when the file
    is a bzImage (boot protocol >= 2.10, :mod:`kdumpd.arch.x86_64.bzimage`), else the
    file size."""
    from kdumpd.arch.x86_64.bzimage import init_size

    with path.open("rb") as f:
        head = f.read(0x264)
    size = path.stat().st_size
    needed = init_size(head)
    return size if needed is None else max(size, needed)


# -- commands -------------------------------------------------------------------


def _daemon_state(ctx: Context) -> dict[str, object] | None:
    try:
        return get_state(bus_address=ctx.bus_address, timeout=3.0)
    except DaemonUnreachable:
        return None


def is_operational(ctx: Context) -> bool:
    kernel = sysfs_crash_loaded(ctx)
    state = _daemon_state(ctx)
    if state is None:
        return kernel is True
    if state.get("state") == "degraded":
        warn(f"kdumpd reports a degraded image: {state.get('last_error') or 'see kdumpd status'}")
    if state.get("stale"):
        warn("the loaded image does not match the current CPUs/memory yet")
    # kdumpctl's own test: a crash kernel is loaded (kexec_crash_loaded reads 1).  A
    # daemon in dry-run, or a kernel without the file, is not operational.
    return state.get("state") in OPERATIONAL_STATES and kernel is True


def cmd_status(ctx: Context, args: list[str]) -> int:
    if is_operational(ctx):
        info("Kdump is operational")
        return EXIT_OK
    info("Kdump is not operational")
    return EXIT_NOT_OPERATIONAL


def _daemon_call(
    ctx: Context,
    member: str,
    action: str,
    done: str,
    *,
    auto_start: bool = False,
    already: str = "",
) -> int:
    """Ask the daemon for ``member``; say ``<action>: [OK]`` (or ``already``) or
    ``[FAILED]`` as kdumpctl does (the failure's reason follows on the next line).
    A caller the daemon refuses (not root, and polkit does not allow it) gets one
    line saying so, not a [FAILED] and the bus's text."""
    try:
        call(member, bus_address=ctx.bus_address, auto_start=auto_start)
    except DaemonAccessDenied as err:
        raise KdumpdError(f"permission denied: {err.text or err.name}") from None
    except DaemonUnreachable as err:
        info(f"{action}: [FAILED]")
        raise KdumpdError(f"{err}; start kdumpd.service") from None
    except KdumpdError:
        info(f"{action}: [FAILED]")
        raise
    info(already or f"{done}: [OK]")
    return EXIT_OK


def cmd_start(ctx: Context, args: list[str]) -> int:
    state = _daemon_state(ctx)
    running = state is not None and state.get("state") in ("loaded", "updating")
    # Load even when an image is loaded (then it loads nothing): the daemon decides
    # whether this caller may start kdump at all, so a caller who may not is told so
    # and gets exit 1, never "already running" and 0.
    return _daemon_call(
        ctx,
        "Load",
        "Starting kdump",
        "Starting kdump",
        auto_start=True,
        already="Kdump already running: [WARNING]" if running else "",
    )


def cmd_stop(ctx: Context, args: list[str]) -> int:
    return _daemon_call(ctx, "Unload", "Stopping kdump", "Stopping kdump")


def cmd_reload(ctx: Context, args: list[str]) -> int:
    state = _daemon_state(ctx)
    if state is not None and state.get("state") not in OPERATIONAL_STATES:
        warn("Kdump was not running")
    return _daemon_call(
        ctx, "Reload", "Reloading kdump", "Reloading kdump (one load, no unload first)"
    )


def cmd_restart(ctx: Context, args: list[str]) -> int:
    return cmd_reload(ctx, args)


def cmd_showmem(ctx: Context, args: list[str]) -> int:
    size = crash_size(ctx)
    info(f"Reserved {size // MiB}MB memory for crash kernel")
    return EXIT_OK


def cmd_get_default_crashkernel(ctx: Context, args: list[str]) -> int:
    mode = args[0] if args else "kdump"
    if mode not in ("kdump", "fadump"):
        info(f"invalid dump mode {mode!r} (kdump or fadump)")
        return EXIT_FAILURE
    sys.stdout.write(_detect_default(ctx, mode))
    return EXIT_OK


def cmd_estimate(ctx: Context, args: list[str]) -> int:
    from kdumpd.system.kdumpconf import loader_inputs

    inputs = loader_inputs(ctx.sysroot)
    reserved = crash_size(ctx)
    default = crashkernel_size_for(_detect_default(ctx, "kdump"), system_size(ctx))
    kernel_path = ctx.path(inputs.kernel)
    if not kernel_path.exists():
        raise InputError(str(kernel_path), "capture kernel not found")
    kernel = kernel_image_size(kernel_path)
    initrd_path = ctx.path(inputs.initrd)
    initrd = initrd_path.stat().st_size if initrd_path.exists() else 0
    modules = 0
    large: list[tuple[str, int]] = []
    for line in (ctx.read("/proc/modules") or "").splitlines():
        fields = line.split()
        if len(fields) >= 2 and fields[1].isdigit():
            modules += int(fields[1])
            if int(fields[1]) >= MiB:
                large.append((fields[0], int(fields[1])))
    runtime = 16 * MiB
    estimated = kernel + modules + 3 * initrd + runtime
    recommended = max(default, estimated)

    def m(n: int) -> str:
        return f"{-(-n // MiB)}M"

    out = [
        f"Reserved crashkernel:    {m(reserved)}",
        f"Recommended crashkernel: {m(recommended)}",
        "",
        f"Kernel image size:   {m(kernel)}",
        f"Kernel modules size: {m(modules)}",
        f"Initramfs size:      {m(initrd)}",
        f"Runtime reservation: {m(runtime)}",
        "Large modules:",
    ]
    out += [f"    {name}: {size}" for name, size in large] or ["    <none>"]
    if reserved < recommended:
        out.append(
            f"WARNING: Current crashkernel size is lower than recommended size {m(recommended)}."
        )
    if not initrd_path.exists():
        warn(f"{inputs.initrd}: kdump initramfs not found; counted as 0")
    print("\n".join(out))
    return EXIT_OK


def cmd_test(ctx: Context, args: list[str]) -> int:
    force = "--force" in args
    if not is_operational(ctx):
        info("Kdump needs be operational before test.")
        return EXIT_FAILURE
    if not force:
        sys.stderr.write(
            "DANGER!!! will perform a kdump test by crashing the system, proceed? (YES/NO): "
        )
        sys.stderr.flush()
        if sys.stdin.readline().strip() != "YES":
            info("Kdump test aborted")
            return EXIT_FAILURE
    trigger = ctx.path("/proc/sysrq-trigger")
    with trigger.open("w") as f:
        f.write("c")
    return EXIT_OK


def _delegate_or_refuse(command: str, what: str) -> Callable[[Context, list[str]], int]:
    def run(ctx: Context, args: list[str]) -> int:
        upstream = os.environ.get("KDUMPD_UPSTREAM_KDUMPCTL", "")
        if upstream and os.access(upstream, os.X_OK):
            sys.stdout.flush()
            sys.stderr.flush()
            os.execv(upstream, [upstream, command, *args])
        info(f"kdumpd does not {what}; use kdump-utils' kdumpctl for this")
        return EXIT_FAILURE

    return run


HANDLERS: dict[str, Callable[[Context, list[str]], int]] = {
    "start": cmd_start,
    "stop": cmd_stop,
    "status": cmd_status,
    "restart": cmd_restart,
    "reload": cmd_reload,
    "showmem": cmd_showmem,
    "estimate": cmd_estimate,
    "get-default-crashkernel": cmd_get_default_crashkernel,
    "test": cmd_test,
    "rebuild": _delegate_or_refuse("rebuild", "build the kdump initramfs (rebuild)"),
    "propagate": _delegate_or_refuse("propagate", "set up ssh dump targets (propagate)"),
    "reset-crashkernel": _delegate_or_refuse(
        "reset-crashkernel", "edit boot loader entries (reset-crashkernel)"
    ),
    "setup-crypttab": _delegate_or_refuse("setup-crypttab", "edit /etc/crypttab (setup-crypttab)"),
}


def main(argv: Sequence[str] | None = None) -> int:
    args = list(sys.argv[1:] if argv is None else argv)
    sysroot = os.environ.get("KDUMPCTL_SYSROOT", "/")
    bus_address: str | None = None
    while args and args[0].startswith("--"):
        opt = args.pop(0)
        name, eq, value = opt.partition("=")
        if name in ("--sysroot", "--bus-address") and not eq:
            if not args:
                print(USAGE, file=sys.stderr)
                return EXIT_FAILURE
            value = args.pop(0)
        if name == "--sysroot":
            sysroot = value
        elif name == "--bus-address":
            bus_address = value
        else:
            print(USAGE, file=sys.stderr)
            return EXIT_FAILURE
    if not args or args[0] not in HANDLERS:
        print(USAGE, file=sys.stderr)
        return EXIT_FAILURE
    command, rest = args[0], args[1:]
    ctx = Context(
        sysroot=Path(sysroot),
        bus_address=bus_address,
        arch=os.environ.get("KDUMPCTL_ARCH") or platform.machine(),
    )
    try:
        return HANDLERS[command](ctx, rest)
    except DaemonError as err:
        info(f"{command}: {err.text or err.name} ({err.name})")
        return EXIT_FAILURE
    except KdumpdError as err:
        info(f"{command}: {err}")
        return EXIT_FAILURE
    except OSError as err:
        where = f"{err.filename}: " if err.filename else ""
        info(f"{command}: {where}{err.strerror or err}")
        return EXIT_FAILURE
    except UnicodeDecodeError as err:  # a binary file where text was expected
        info(f"{command}: not a text file ({err.reason})")
        return EXIT_FAILURE
    except KeyboardInterrupt:
        return 130
    except Exception as err:  # a bug: one line, never a traceback
        info(f"{command}: internal error: {type(err).__name__}: {err}")
        return EXIT_FAILURE


if __name__ == "__main__":
    sys.exit(main())
