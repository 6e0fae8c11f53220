"""Read-only compatibility with kdump-utils' ``/etc/kdump.conf`` and
``/etc/sysconfig/kdump``.

kdumpd does not build the kdump initramfs and does not write a dump; it needs from
these files what ``kdumpctl``'s ``load_kdump()`` would pass to ``kexec -p``: the
capture kernel, its initramfs, the command line and ``KEXEC_ARGS``.  The rules
follow kdump-utils (``kdumpctl`` ``parse_config()``, ``prepare_cmdline()``,
``gen-kdump-sysconfig.sh``; see docs/kernel-interfaces.md §7):

* ``kdump.conf``: one ``directive value`` per line, ``#`` starts a comment; exactly one
  dump target at most; deprecated directives (``net``, ``options``, ``link_delay``,
  ``disk_timeout``, ``debug_mem_level``, ``blacklist``) and unknown ones are errors;
  ``default`` is the deprecated alias of ``failure_action``.
* ``sysconfig/kdump``: shell assignments (``NAME=value``, optional ``export``), with
  shell quoting (``'...'``, ``"..."``, backslashes) and ``$NAME``/``${NAME}`` expansion
  of variables assigned earlier in the file.  Command substitution is refused: the
  file is parsed, never executed.
* Kernel: ``${KDUMP_BOOTDIR:-/boot}/${KDUMP_IMG:-vmlinuz}-${KDUMP_KERNELVER:-$(uname
  -r)}${KDUMP_IMG_EXT}``; initramfs: ``${KDUMP_BOOTDIR}/initramfs-${KDUMP_KERNELVER}kdump.img``.
* Command line: ``KDUMP_COMMANDLINE`` or ``/proc/cmdline``; drop ``crashkernel``,
  ``panic_on_warn``, ``root``, ``rd.lvm.lv``, ``rd.luks.uuid``, ``rd.dm.uuid``,
  ``rd.md.uuid``, ``fcoe``, ``netroot``, ``rd.iscsi.initiator``, ``iscsi_initiator``
  and every name in ``KDUMP_COMMANDLINE_REMOVE``; append ``KDUMP_COMMANDLINE_APPEND``,
  ``disable_cpu_apicid=<boot cpu>`` when known, and ``rd.systemd.gpt_auto=no``.

A bad line raises :class:`~kdumpd.core.errors.InputError` naming ``file:line`` and the
reason.
"""

from __future__ import annotations

import os
import platform
import re
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from kdumpd.arch import capture_append
from kdumpd.core.errors import InputError
from kdumpd.system.sysroot import Sysroot, parse_bool01

KDUMP_CONF = "/etc/kdump.conf"
SYSCONFIG_KDUMP = "/etc/sysconfig/kdump"
DEFAULT_KDUMP_TOOLS = "/etc/default/kdump-tools"  # Debian/Ubuntu kdump-tools

DUMP_TARGETS = frozenset(
    {"raw", "nfs", "ssh", "ext2", "ext3", "ext4", "minix", "btrfs", "xfs", "virtiofs"}
)
DIRECTIVES = frozenset(
    {
        "path",
        "sshkey",
        "core_collector",
        "kdump_pre",
        "kdump_post",
        "kdump_emergency",
        "extra_bins",
        "extra_modules",
        "failure_action",
        "default",
        "final_action",
        "force_rebuild",
        "force_no_rebuild",
        "dracut_args",
        "fence_kdump_args",
        "fence_kdump_nodes",
        "auto_reset_crashkernel",
    }
)
DEPRECATED = frozenset(
    {"net", "options", "link_delay", "disk_timeout", "debug_mem_level", "blacklist"}
)
FAILURE_ACTIONS = frozenset({"reboot", "halt", "poweroff", "shell", "dump_to_rootfs"})
FINAL_ACTIONS = frozenset({"reboot", "halt", "poweroff"})

# Parameters kdumpctl's prepare_cmdline() always removes from the first kernel's line.
ALWAYS_REMOVED = (
    "crashkernel",
    "panic_on_warn",
    "root",
    "rd.lvm.lv",
    "rd.luks.uuid",
    "rd.dm.uuid",
    "rd.md.uuid",
    "fcoe",
    "netroot",
    "rd.iscsi.initiator",
    "iscsi_initiator",
)

#: What kdumpd appends to the capture kernel's command line when nothing else says:
#: the running machine's architecture's line (:func:`kdumpd.arch.capture_append`).
DEFAULT_CAPTURE_APPEND = capture_append(platform.machine())

# gen-kdump-sysconfig.sh's common KDUMP_COMMANDLINE_REMOVE (docs/kernel-interfaces.md §7) plus
# the default ``cma``: what the capture kernel must not inherit when no
# /etc/sysconfig/kdump says otherwise.
DEFAULT_COMMANDLINE_REMOVE = (
    "hugepages",
    "hugepagesz",
    "slub_debug",
    "quiet",
    "log_buf_len",
    "swiotlb",
    "hugetlb_cma",
    "ignition.firstboot",
    "cma",
)


@dataclass(frozen=True, slots=True)
class KdumpConf:
    """The directives of ``/etc/kdump.conf`` kdumpd understands (all of them are read,
    none of the dump-side ones changes what kdumpd loads)."""

    target: tuple[str, str] | None = None
    path: str = "/var/crash"
    sshkey: str = "/root/.ssh/kdump_id_rsa"
    core_collector: str = "makedumpfile -l --message-level 7 -d 31"
    failure_action: str = "reboot"
    final_action: str = "reboot"
    force_rebuild: bool = False
    force_no_rebuild: bool = False
    dracut_args: str = ""
    extra_bins: tuple[str, ...] = ()
    extra_modules: tuple[str, ...] = ()
    kdump_pre: tuple[str, ...] = ()
    kdump_post: tuple[str, ...] = ()
    kdump_emergency: tuple[str, ...] = ()
    fence_kdump_args: str = ""
    fence_kdump_nodes: tuple[str, ...] = ()
    auto_reset_crashkernel: bool = True
    source: str = KDUMP_CONF


def parse_kdump_conf(text: str, source: str = KDUMP_CONF) -> KdumpConf:
    """Parse the text of ``/etc/kdump.conf``."""
    values: dict[str, Any] = {"source": source}
    target: tuple[str, str] | None = None
    multi: dict[str, list[str]] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.split("#", 1)[0].strip()
        if not line:
            continue
        parts = line.split(None, 1)
        name = parts[0]
        value = parts[1].strip() if len(parts) > 1 else ""
        if name in DEPRECATED:
            raise InputError(
                source,
                f"deprecated kdump config option {name!r}; see kdump.conf(5) for alternatives",
                lineno,
            )
        if name not in DIRECTIVES and name not in DUMP_TARGETS:
            raise InputError(source, f"invalid kdump config option {name!r}", lineno)
        if not value:
            raise InputError(source, f"missing value for option {name!r}", lineno)
        if name in DUMP_TARGETS:
            if target is not None:
                raise InputError(
                    source,
                    f"more than one dump target ({target[0]} and {name})",
                    lineno,
                )
            target = (name, value)
        elif name in ("failure_action", "default"):
            if value not in FAILURE_ACTIONS:
                raise InputError(
                    source,
                    f"invalid failure_action {value!r} (one of "
                    f"{', '.join(sorted(FAILURE_ACTIONS))})",
                    lineno,
                )
            values["failure_action"] = value
        elif name == "final_action":
            if value not in FINAL_ACTIONS:
                raise InputError(
                    source,
                    f"invalid final_action {value!r} (one of {', '.join(sorted(FINAL_ACTIONS))})",
                    lineno,
                )
            values["final_action"] = value
        elif name in ("force_rebuild", "force_no_rebuild"):
            values[name] = parse_bool01(value, source, lineno, name)
        elif name == "auto_reset_crashkernel":
            if value not in ("yes", "no"):
                raise InputError(source, "auto_reset_crashkernel must be yes or no", lineno)
            values[name] = value == "yes"
        elif name in ("extra_bins", "extra_modules", "fence_kdump_nodes"):
            multi.setdefault(name, []).extend(value.split())
        elif name in ("kdump_pre", "kdump_post", "kdump_emergency"):
            multi.setdefault(name, []).append(value)
        elif name == "path":
            if not value.startswith("/"):
                raise InputError(source, f"path must be absolute, not {value!r}", lineno)
            values["path"] = value
        else:
            values[name] = value
        if name == "dracut_args" and target is None and "--mount" in value:
            target = ("dracut_args", value)
    if values.get("force_rebuild") and values.get("force_no_rebuild"):
        raise InputError(source, "force_rebuild and force_no_rebuild are mutually exclusive")
    values.update({k: tuple(v) for k, v in multi.items()})
    return KdumpConf(target=target, **values)


# -- /etc/sysconfig/kdump ------------------------------------------------------

_ASSIGN = re.compile(r"^(?:export\s+)?([A-Za-z_][A-Za-z0-9_]*)=(.*)$")
_VAR = re.compile(r"\$(?:\{([A-Za-z_][A-Za-z0-9_]*)\}|([A-Za-z_][A-Za-z0-9_]*))")


class _ShellError(Exception):
    pass


def _shell_word(text: str, env: dict[str, str]) -> str:
    """One shell word (the value of an assignment): quotes, backslashes and simple
    ``$NAME``/``${NAME}`` expansion; the rest of the line may only be a comment."""
    out: list[str] = []
    i = 0
    n = len(text)

    def expand(j: int) -> tuple[str, int]:
        if text.startswith("$(", j) or text.startswith("$((", j):
            raise _ShellError("command substitution is not supported (the file is parsed, not run)")
        m = _VAR.match(text, j)
        if m is None:
            return "$", j + 1
        name = m.group(1) or m.group(2)
        return env.get(name, ""), m.end()

    while i < n:
        c = text[i]
        if c in " \t":
            rest = text[i:].strip()
            if rest and not rest.startswith("#"):
                raise _ShellError(f"unquoted whitespace in value before {rest[:20]!r}")
            break
        if c == "#" and not out and i == 0:
            break
        if c == "`":
            raise _ShellError("command substitution is not supported (the file is parsed, not run)")
        if c == "'":
            end = text.find("'", i + 1)
            if end < 0:
                raise _ShellError("unterminated single quote")
            out.append(text[i + 1 : end])
            i = end + 1
        elif c == '"':
            i += 1
            while True:
                if i >= n:
                    raise _ShellError("unterminated double quote")
                d = text[i]
                if d == '"':
                    i += 1
                    break
                if d == "\\" and i + 1 < n and text[i + 1] in '$`"\\':
                    out.append(text[i + 1])
                    i += 2
                elif d == "$":
                    s, i = expand(i)
                    out.append(s)
                elif d == "`":
                    raise _ShellError(
                        "command substitution is not supported (the file is parsed, not run)"
                    )
                else:
                    out.append(d)
                    i += 1
        elif c == "\\":
            if i + 1 < n:
                out.append(text[i + 1])
            i += 2
        elif c == "$":
            s, i = expand(i)
            out.append(s)
        elif c in ";&|<>()":
            raise _ShellError(f"shell operator {c!r} is not supported")
        else:
            out.append(c)
            i += 1
    return "".join(out)


def parse_sysconfig(text: str, source: str = SYSCONFIG_KDUMP) -> dict[str, str]:
    """Parse shell-style ``NAME=value`` lines into a dict (later lines win)."""
    env: dict[str, str] = {}
    for lineno, raw in enumerate(text.splitlines(), 1):
        line = raw.strip()
        if not line or line.startswith("#"):
            continue
        m = _ASSIGN.match(line)
        if m is None:
            raise InputError(source, f"not a NAME=value assignment: {line[:40]!r}", lineno)
        try:
            env[m.group(1)] = _shell_word(m.group(2), env)
        except _ShellError as err:
            raise InputError(source, f"{m.group(1)}: {err}", lineno) from None
    return env


@dataclass(frozen=True, slots=True)
class KdumpSysconfig:
    kernelver: str = ""
    commandline: str = ""
    commandline_remove: tuple[str, ...] = ()
    commandline_append: str = ""
    kexec_args: tuple[str, ...] = ()
    bootdir: str = "/boot"
    img: str = "vmlinuz"
    img_ext: str = ""
    extra: dict[str, str] = field(default_factory=dict)
    # False when the file does not set the variable at all (kdump-utils' defaults apply)
    remove_set: bool = True
    append_set: bool = True

    @classmethod
    def from_env(cls, env: dict[str, str]) -> KdumpSysconfig:
        return cls(
            kernelver=env.get("KDUMP_KERNELVER", ""),
            commandline=env.get("KDUMP_COMMANDLINE", ""),
            commandline_remove=tuple(env.get("KDUMP_COMMANDLINE_REMOVE", "").split()),
            commandline_append=env.get("KDUMP_COMMANDLINE_APPEND", "").strip(),
            kexec_args=tuple(env.get("KEXEC_ARGS", "").split()),
            bootdir=env.get("KDUMP_BOOTDIR", "") or "/boot",
            img=env.get("KDUMP_IMG", "") or "vmlinuz",
            img_ext=env.get("KDUMP_IMG_EXT", ""),
            extra=dict(env),
            remove_set="KDUMP_COMMANDLINE_REMOVE" in env,
            append_set="KDUMP_COMMANDLINE_APPEND" in env,
        )


# -- the kernel command line ---------------------------------------------------


def split_cmdline(cmdline: str) -> list[str]:
    """Split a kernel command line into parameters; double quotes group (as the
    kernel's ``next_arg()`` does) and are kept."""
    params: list[str] = []
    cur: list[str] = []
    quoted = False
    for c in cmdline.strip():
        if c == '"':
            quoted = not quoted
            cur.append(c)
        elif c.isspace() and not quoted:
            if cur:
                params.append("".join(cur))
                cur = []
        else:
            cur.append(c)
    if cur:
        params.append("".join(cur))
    return params


def _param_name(param: str) -> str:
    return param.split("=", 1)[0]


def remove_params(cmdline: str, names: tuple[str, ...] | list[str]) -> str:
    """Drop every parameter whose name (before ``=``) is in ``names``."""
    drop = set(names)
    return " ".join(p for p in split_cmdline(cmdline) if _param_name(p) not in drop)


def prepare_cmdline(
    sysconfig: KdumpSysconfig,
    proc_cmdline: str,
    *,
    boot_cpu_apicid: int | None = None,
    default_append: str = "",
) -> str:
    """The capture kernel's command line, as ``kdumpctl``'s ``prepare_cmdline()``
    builds it (watchdog pretimeout handling aside).  When ``KDUMP_COMMANDLINE_REMOVE``
    / ``_APPEND`` are not set at all (no /etc/sysconfig/kdump, only /etc/kdump.conf),
    kdump-utils' default remove list and ``default_append`` (kdumpd's
    ``[kexec] append``, by default :data:`DEFAULT_CAPTURE_APPEND`) apply instead."""
    base = sysconfig.commandline or proc_cmdline
    remove = sysconfig.commandline_remove
    if not sysconfig.remove_set:
        remove = DEFAULT_COMMANDLINE_REMOVE
    line = remove_params(base, (*ALWAYS_REMOVED, *remove))
    parts = [line] if line else []
    append = sysconfig.commandline_append
    if not sysconfig.append_set:
        append = default_append.strip()
    if append:
        parts.append(append)
    if boot_cpu_apicid is not None:
        parts.append(f"disable_cpu_apicid={boot_cpu_apicid}")
    parts.append("rd.systemd.gpt_auto=no")
    return " ".join(parts)


# -- loader inputs -------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class LoaderInputs:
    """What ``kexec -p`` would be given: paths are absolute on the target system
    (not prefixed with the sysroot)."""

    kernel: str
    initrd: str
    cmdline: str
    kexec_args: tuple[str, ...]
    kernelver: str


def read_kdump_conf(sysroot: str | Path = "/") -> KdumpConf | None:
    """``/etc/kdump.conf`` below ``sysroot``, or None when it does not exist."""
    root = Sysroot(sysroot)
    text = root.read_text(KDUMP_CONF)
    return None if text is None else parse_kdump_conf(text, root.path(KDUMP_CONF))


def read_sysconfig(sysroot: str | Path = "/") -> KdumpSysconfig:
    """``/etc/sysconfig/kdump`` below ``sysroot`` (defaults when it does not exist)."""
    root = Sysroot(sysroot)
    text = root.read_text(SYSCONFIG_KDUMP)
    if text is None:
        return KdumpSysconfig(remove_set=False, append_set=False)
    return KdumpSysconfig.from_env(parse_sysconfig(text, root.path(SYSCONFIG_KDUMP)))


def read_kexec_args(sysroot: str | Path = "/") -> tuple[str, ...]:
    """Extra ``kexec -p`` arguments the distribution's kdump service would pass:
    ``KEXEC_ARGS`` from kdump-utils' ``/etc/sysconfig/kdump``; when that file does not
    set it, ``KDUMP_KEXEC_ARGS`` from kdump-tools' ``/etc/default/kdump-tools``.
    Raises :class:`InputError` on a bad line."""
    root = Sysroot(sysroot)
    text = root.read_text(SYSCONFIG_KDUMP)
    if text is not None:
        env = parse_sysconfig(text, root.path(SYSCONFIG_KDUMP))
        if "KEXEC_ARGS" in env:
            return tuple(env["KEXEC_ARGS"].split())
    text = root.read_text(DEFAULT_KDUMP_TOOLS)
    if text is not None:
        env = parse_sysconfig(text, root.path(DEFAULT_KDUMP_TOOLS))
        return tuple(env.get("KDUMP_KEXEC_ARGS", "").split())
    return ()


def loader_inputs(
    sysroot: str | Path = "/",
    *,
    release: str | None = None,
    boot_cpu_apicid: int | None = None,
    default_append: str = "",
) -> LoaderInputs:
    """Kernel, initramfs, command line and ``KEXEC_ARGS`` as kdump-utils would use
    them.  ``release`` defaults to ``uname -r`` of the running kernel (read from
    ``/proc/sys/kernel/osrelease`` below ``sysroot``, else :func:`os.uname`)."""
    root = Sysroot(sysroot)
    read_kdump_conf(sysroot)  # validates; a bad line raises InputError
    sysconfig = read_sysconfig(sysroot)
    kernelver = sysconfig.kernelver or release
    if not kernelver:
        kernelver = root.read_value("/proc/sys/kernel/osrelease") or os.uname().release
    bootdir = sysconfig.bootdir.rstrip("/") or "/"
    kernel = f"{bootdir}/{sysconfig.img}-{kernelver}{sysconfig.img_ext}"
    initrd = f"{bootdir}/initramfs-{kernelver}kdump.img"
    proc_cmdline = (root.read_text("/proc/cmdline") or "").strip()
    cmdline = prepare_cmdline(
        sysconfig, proc_cmdline, boot_cpu_apicid=boot_cpu_apicid, default_append=default_append
    )
    return LoaderInputs(
        kernel=kernel,
        initrd=initrd,
        cmdline=cmdline,
        kexec_args=sysconfig.kexec_args,
        kernelver=kernelver,
    )


def kexec_defaults(
    sysroot: str | Path = "/",
    kernel: str = "",
    initrd: str = "",
    cmdline: str = "",
    append: str = "",
) -> dict[str, str]:
    """``[kexec]`` values kdump-utils' files imply for the fields left empty.

    Empty unless ``/etc/sysconfig/kdump`` or ``/etc/kdump.conf`` exists below
    ``sysroot`` (kdumpd's own defaults apply then).  The kernel and initramfs are only
    returned when the files exist, so a missing kdump initramfs falls back to kdumpd's
    own search.  The command line is complete (``KDUMP_COMMANDLINE_APPEND`` included).
    Raises :class:`InputError` (``file:line: reason``) on a bad line.
    """
    root = Sysroot(sysroot)
    if not any(root.exists(p) for p in (SYSCONFIG_KDUMP, KDUMP_CONF)):
        return {}
    li = loader_inputs(sysroot, default_append=append)
    out: dict[str, str] = {}
    if not kernel and root.is_file(li.kernel):
        out["kernel"] = li.kernel
    if not initrd and root.is_file(li.initrd):
        out["initrd"] = li.initrd
    if not cmdline:
        out["cmdline"] = li.cmdline
    return out
