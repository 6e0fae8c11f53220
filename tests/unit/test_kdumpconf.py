"""/etc/kdump.conf and /etc/sysconfig/kdump as kdump-utils interprets them."""

from __future__ import annotations

from pathlib import Path

import pytest
from hypothesis import given
from hypothesis import strategies as st

from kdumpd.core.errors import InputError
from kdumpd.system.kdumpconf import (
    KdumpSysconfig,
    loader_inputs,
    parse_kdump_conf,
    parse_sysconfig,
    prepare_cmdline,
    remove_params,
    split_cmdline,
)

# The x86_64 file kdump-utils' gen-kdump-sysconfig.sh writes (values from §6.4).
FEDORA_SYSCONFIG = """\
# Kernel Version string for the -kdump kernel, such as 2.6.13-1544.FC5kdump
# If no version is specified, then the init script will try to find a
# kdump kernel with the same version number as the running kernel.
KDUMP_KERNELVER=""

# The kdump commandline is the command line that needs to be passed off to
# the kdump kernel.
KDUMP_COMMANDLINE=""

# This variable lets us remove arguments from the current kdump commandline
KDUMP_COMMANDLINE_REMOVE="hugepages hugepagesz slub_debug quiet log_buf_len swiotlb hugetlb_cma ignition.firstboot cma"

# This variable lets us append arguments to the current kdump commandline
KDUMP_COMMANDLINE_APPEND="irqpoll nr_cpus=1 reset_devices cgroup_disable=memory mce=off numa=off udev.children-max=2 panic=10 acpi_no_memhotplug transparent_hugepage=never nokaslr hest_disable novmcoredd cma=0 hugetlb_cma=0"

# Any additional kexec arguments required.
KEXEC_ARGS="-s"

#Where to find the boot image
#KDUMP_BOOTDIR="/boot"

#What is the image type used for kdump
KDUMP_IMG="vmlinuz"

#What is the images extension.
KDUMP_IMG_EXT=""
"""  # noqa: E501


def test_fedora_sysconfig() -> None:
    env = parse_sysconfig(FEDORA_SYSCONFIG)
    cfg = KdumpSysconfig.from_env(env)
    assert cfg.kexec_args == ("-s",)
    assert "cma" in cfg.commandline_remove and "quiet" in cfg.commandline_remove
    assert cfg.commandline_append.startswith("irqpoll nr_cpus=1")
    assert cfg.bootdir == "/boot" and cfg.img == "vmlinuz" and cfg.kernelver == ""


@pytest.mark.parametrize(
    ("line", "value"),
    [
        ("A=plain", "plain"),
        ("A='single $X quoted'", "single $X quoted"),
        ('A="double $X"', "double xv"),
        ('A="${X}y"', "xvy"),
        ("A=$X", "xv"),
        ('A="esc \\" \\$X"', 'esc " $X'),
        ("A=back\\ slash", "back slash"),
        ("export A=exported", "exported"),
        ("A=", ""),
        ('A="" # comment', ""),
        ("A=value # comment", "value"),
        ("A=con'cat'\"enated\"", "concatenated"),
        ("A=$UNSET", ""),
    ],
)
def test_shell_quoting(line: str, value: str) -> None:
    assert parse_sysconfig(f"X=xv\n{line}\n")["A"] == value


@pytest.mark.parametrize(
    ("line", "reason"),
    [
        ("A=$(uname -r)", "command substitution"),
        ("A=`uname -r`", "command substitution"),
        ('A="$(id)"', "command substitution"),
        ("A='open", "unterminated single quote"),
        ('A="open', "unterminated double quote"),
        ("A=two words", "unquoted whitespace"),
        ("A=x;reboot", "shell operator"),
        ("not an assignment", "not a NAME=value assignment"),
        ("1A=x", "not a NAME=value assignment"),
    ],
)
def test_sysconfig_bad_line(line: str, reason: str) -> None:
    with pytest.raises(InputError) as info:
        parse_sysconfig(f"# header\nOK=1\n{line}\n", "/etc/sysconfig/kdump")
    assert info.value.line == 3
    assert reason in info.value.problem
    assert str(info.value).startswith("/etc/sysconfig/kdump:3: ")


def test_kdump_conf_full() -> None:
    conf = parse_kdump_conf(
        "# comment\n"
        "\n"
        "xfs UUID=0123-abcd  # the dump disk\n"
        "path /var/crash\n"
        "core_collector makedumpfile -l --message-level 7 -d 31\n"
        "failure_action shell\n"
        "final_action poweroff\n"
        "extra_bins /usr/bin/lsblk\n"
        "extra_bins /usr/bin/lspci\n"
        "kdump_post /var/crash/scripts/post.sh\n"
        "force_rebuild 1\n"
        "auto_reset_crashkernel no\n"
    )
    assert conf.target == ("xfs", "UUID=0123-abcd")
    assert conf.failure_action == "shell" and conf.final_action == "poweroff"
    assert conf.extra_bins == ("/usr/bin/lsblk", "/usr/bin/lspci")
    assert conf.kdump_post == ("/var/crash/scripts/post.sh",)
    assert conf.force_rebuild is True and conf.auto_reset_crashkernel is False
    assert conf.core_collector.endswith("-d 31")


def test_kdump_conf_defaults_and_alias() -> None:
    conf = parse_kdump_conf("default poweroff\n")
    assert conf.target is None and conf.path == "/var/crash"
    assert conf.failure_action == "poweroff"


@pytest.mark.parametrize(
    ("text", "line", "reason"),
    [
        ("path /x\nnet user@host\n", 2, "deprecated kdump config option 'net'"),
        ("blacklist foo\n", 1, "deprecated"),
        ("link_delay 5\n", 1, "deprecated"),
        ("frobnicate yes\n", 1, "invalid kdump config option 'frobnicate'"),
        ("xfs /dev/sda1\nnfs host:/x\n", 2, "more than one dump target"),
        ("failure_action explode\n", 1, "invalid failure_action"),
        ("final_action shell\n", 1, "invalid final_action"),
        ("force_rebuild yes\n", 1, "must be 0 or 1"),
        ("path\n", 1, "missing value"),
        ("path relative/dir\n", 1, "must be absolute"),
    ],
)
def test_kdump_conf_bad_line(text: str, line: int, reason: str) -> None:
    with pytest.raises(InputError) as info:
        parse_kdump_conf(text, "/etc/kdump.conf")
    assert info.value.line == line
    assert reason in info.value.problem


def test_kdump_conf_mutually_exclusive() -> None:
    with pytest.raises(InputError, match="mutually exclusive"):
        parse_kdump_conf("force_rebuild 1\nforce_no_rebuild 1\n")


def test_split_cmdline_keeps_quoted_values() -> None:
    assert split_cmdline('a b="x y" c=1  d') == ["a", 'b="x y"', "c=1", "d"]


def test_remove_params_by_name() -> None:
    line = "BOOT_IMAGE=/vmlinuz root=UUID=1 ro crashkernel=256M quiet hugepages=4 hugepagesz=2M"
    out = remove_params(line, ["crashkernel", "root", "quiet", "hugepages"])
    assert out == "BOOT_IMAGE=/vmlinuz ro hugepagesz=2M"


def test_prepare_cmdline_like_kdumpctl() -> None:
    cfg = KdumpSysconfig.from_env(parse_sysconfig(FEDORA_SYSCONFIG))
    proc = (
        "BOOT_IMAGE=(hd0,gpt2)/vmlinuz-6.8.0 root=/dev/mapper/rhel-root ro "
        "crashkernel=2G-64G:256M,64G-:512M rd.lvm.lv=rhel/root rd.lvm.lv=rhel/swap "
        "rhgb quiet panic_on_warn=1 console=ttyS0"
    )
    out = prepare_cmdline(cfg, proc, boot_cpu_apicid=0)
    params = split_cmdline(out)
    assert "crashkernel" not in out and "root=" not in out and "rd.lvm.lv" not in out
    assert "quiet" not in params and "panic_on_warn=1" not in params
    assert params[:4] == ["BOOT_IMAGE=(hd0,gpt2)/vmlinuz-6.8.0", "ro", "rhgb", "console=ttyS0"]
    assert "irqpoll" in params and "nr_cpus=1" in params
    assert params[-2:] == ["disable_cpu_apicid=0", "rd.systemd.gpt_auto=no"]


def test_kdump_commandline_overrides_proc() -> None:
    cfg = KdumpSysconfig(commandline="console=ttyS0 root=/dev/vda", commandline_append="x=1")
    assert prepare_cmdline(cfg, "ignored=1") == "console=ttyS0 x=1 rd.systemd.gpt_auto=no"


@given(st.lists(st.from_regex(r"[a-z_.]{1,8}(=[a-z0-9,]{0,6})?", fullmatch=True), max_size=12))
def test_remove_params_property(params: list[str]) -> None:
    names = sorted({p.split("=", 1)[0] for p in params[::2]})
    out = split_cmdline(remove_params(" ".join(params), names))
    assert all(p.split("=", 1)[0] not in names for p in out)
    assert out == [p for p in params if p.split("=", 1)[0] not in names]


def _sysroot(tmp: Path, sysconfig: str = "", kdump_conf: str | None = None) -> Path:
    (tmp / "etc/sysconfig").mkdir(parents=True)
    (tmp / "proc/sys/kernel").mkdir(parents=True)
    (tmp / "proc/sys/kernel/osrelease").write_text("6.1.0-26-amd64\n")
    (tmp / "proc/cmdline").write_text("BOOT_IMAGE=/vmlinuz root=/dev/vda1 crashkernel=256M quiet\n")
    (tmp / "etc/sysconfig/kdump").write_text(sysconfig)
    if kdump_conf is not None:
        (tmp / "etc/kdump.conf").write_text(kdump_conf)
    return tmp


def test_loader_inputs_defaults(tmp_path: Path) -> None:
    root = _sysroot(tmp_path, FEDORA_SYSCONFIG, "path /var/crash\n")
    li = loader_inputs(root)
    assert li.kernel == "/boot/vmlinuz-6.1.0-26-amd64"
    assert li.initrd == "/boot/initramfs-6.1.0-26-amd64kdump.img"
    assert li.kexec_args == ("-s",)
    assert li.cmdline.startswith("BOOT_IMAGE=/vmlinuz irqpoll nr_cpus=1")


def test_loader_inputs_kernelver_bootdir_img(tmp_path: Path) -> None:
    root = _sysroot(
        tmp_path,
        'KDUMP_KERNELVER="6.6.0-kdump"\nKDUMP_BOOTDIR=/efi/boot/\nKDUMP_IMG=vmlinux\n'
        "KDUMP_IMG_EXT=.efi\n",
    )
    li = loader_inputs(root)
    assert li.kernel == "/efi/boot/vmlinux-6.6.0-kdump.efi"
    assert li.initrd == "/efi/boot/initramfs-6.6.0-kdumpkdump.img"
    assert li.kernelver == "6.6.0-kdump"


def test_loader_inputs_bad_kdump_conf_names_file_and_line(tmp_path: Path) -> None:
    root = _sysroot(tmp_path, "", "path /var/crash\noptions foo\n")
    with pytest.raises(InputError) as info:
        loader_inputs(root)
    assert str(info.value) == (
        f"{root}/etc/kdump.conf:2: deprecated kdump config option 'options'; "
        "see kdump.conf(5) for alternatives"
    )


def test_loader_inputs_without_files(tmp_path: Path) -> None:
    li = loader_inputs(tmp_path, release="6.9.0")
    assert li.kernel == "/boot/vmlinuz-6.9.0"
    assert li.cmdline == "rd.systemd.gpt_auto=no"


def test_settings_take_kexec_from_kdump_utils(tmp_path: Path) -> None:
    from kdumpd.config import load_settings

    root = _sysroot(tmp_path, FEDORA_SYSCONFIG, "path /var/crash\n")
    (root / "boot").mkdir()
    (root / "boot/vmlinuz-6.1.0-26-amd64").write_bytes(b"k")
    s = load_settings(None, {"sysroot": str(root)}, env={})
    assert s.kexec.kernel == "/boot/vmlinuz-6.1.0-26-amd64"
    assert s.kexec.initrd == ""  # no kdump initramfs: kdumpd's own search applies
    assert s.kexec.cmdline.startswith("BOOT_IMAGE=/vmlinuz irqpoll nr_cpus=1")
    # Explicit settings win over kdump-utils' files.
    s = load_settings(None, {"sysroot": str(root), "kexec": {"cmdline": "console=ttyS0"}}, env={})
    assert s.kexec.cmdline == "console=ttyS0"


def test_settings_bad_sysconfig_line_is_input_error(tmp_path: Path) -> None:
    from kdumpd.config import load_settings

    root = _sysroot(tmp_path, "KEXEC_ARGS=-s\nKDUMP_KERNELVER=$(uname -r)\n")
    with pytest.raises(InputError) as info:
        load_settings(None, {"sysroot": str(root)}, env={})
    assert str(info.value).startswith(f"{root}/etc/sysconfig/kdump:2: KDUMP_KERNELVER: ")


def test_settings_without_kdump_utils_files_unchanged(tmp_path: Path) -> None:
    from kdumpd.config import load_settings

    s = load_settings(None, {"sysroot": str(tmp_path)}, env={})
    assert (s.kexec.kernel, s.kexec.initrd, s.kexec.cmdline) == ("", "", "")
