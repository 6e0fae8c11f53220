from __future__ import annotations

from pathlib import Path

import pytest

from kdumpd.config import Settings, load_settings
from kdumpd.core.errors import InputError


def write(tmp_path: Path, text: str) -> Path:
    p = tmp_path / "kdumpd.toml"
    p.write_text(text)
    return p


def test_defaults() -> None:
    s = load_settings(env={}, config=None)
    assert isinstance(s, Settings)
    assert s.backend == "auto" and s.debounce.quiet_ms == 100 and s.debounce.max_ms == 1000
    assert str(s.state_dir) == "/run/kdumpd" and str(s.sysroot) == "/" and s.dbus


def test_precedence_cli_env_file(tmp_path: Path) -> None:
    p = write(tmp_path, 'backend = "file"\n[debounce]\nquiet_ms = 50\nmax_ms = 500\n')
    assert load_settings(p, env={}).debounce.quiet_ms == 50
    env = {"KDUMPD_DEBOUNCE__QUIET_MS": "70", "KDUMPD_BACKEND": "kernel"}
    s = load_settings(p, env=env)
    assert (s.debounce.quiet_ms, s.debounce.max_ms, s.backend) == (70, 500, "kernel")
    s = load_settings(p, {"debounce": {"quiet_ms": 5}, "backend": "dry-run"}, env=env)
    assert (s.debounce.quiet_ms, s.backend) == (5, "dry-run")


def test_frozen(tmp_path: Path) -> None:
    s = load_settings(env={})
    with pytest.raises(Exception):  # noqa: B017 - pydantic ValidationError
        s.backend = "file"  # type: ignore[misc]


@pytest.mark.parametrize(
    ("text", "needle"),
    [
        ('backend = "fast"\n', "kdumpd.toml: backend:"),
        ("[debounce]\nquite_ms = 5\n", "debounce.quite_ms: unknown key"),
        ("[debounce]\nquiet_ms = -1\n", "debounce.quiet_ms:"),
        ("[debounce]\nquiet_ms = 500\nmax_ms = 100\n", "max_ms (100) must be >= quiet_ms"),
        ("backend = \n", "not valid TOML"),
    ],
)
def test_bad_file_one_line_naming_file_and_key(tmp_path: Path, text: str, needle: str) -> None:
    p = write(tmp_path, text)
    with pytest.raises(InputError) as exc:
        load_settings(p, env={})
    msg = str(exc.value)
    assert "\n" not in msg and str(p) in msg and needle in msg


def test_bad_env_names_variable() -> None:
    with pytest.raises(InputError, match=r"^KDUMPD_DEBOUNCE__MAX_MS: debounce.max_ms:"):
        load_settings(env={"KDUMPD_DEBOUNCE__MAX_MS": "soon"})


def test_missing_explicit_file(tmp_path: Path) -> None:
    with pytest.raises(InputError, match=r"nope\.toml"):
        load_settings(tmp_path / "nope.toml", env={})


def test_shipped_example_config_is_valid_and_documents_the_defaults() -> None:
    """docs/kdumpd.toml is installed as /etc/kdumpd/kdumpd.toml: it must load, and
    every value it shows must be the real default (so the file cannot drift)."""
    from kdumpd.config import Settings, load_settings

    example = Path(__file__).resolve().parents[2] / "docs/kdumpd.toml"
    assert load_settings(example, env={}).model_dump() == Settings().model_dump()
    # and it is not an empty file that trivially equals the defaults
    text = example.read_text()
    for key in ("backend", "quiet_ms", "max_ms", "max_cpus", "max_ranges", "append"):
        assert f"{key} =" in text


def test_unparsable_environment_value_is_one_input_error_line() -> None:
    # pydantic-settings parses a nested model's env value as JSON and raises its own
    # SettingsError (not a ValidationError); the daemon must see an InputError
    with pytest.raises(InputError) as info:
        load_settings(env={"KDUMPD_DEBOUNCE": "{bad"}, config=None)
    text = str(info.value)
    assert text.startswith("KDUMPD_DEBOUNCE: cannot parse the value") and "\n" not in text


def test_unreadable_kdump_utils_file_is_an_input_error(tmp_path: Path) -> None:
    (tmp_path / "etc/sysconfig/kdump").mkdir(parents=True)  # EISDIR, not ENOENT
    with pytest.raises(InputError) as info:
        load_settings(config=None, overrides={"sysroot": str(tmp_path)}, env={})
    assert str(info.value).startswith(f"{tmp_path}/etc/sysconfig/kdump: ")


def test_kdump_conf_without_sysconfig_keeps_the_capture_parameters(tmp_path: Path) -> None:
    (tmp_path / "etc").mkdir()
    (tmp_path / "etc/kdump.conf").write_text("path /var/crash\n")
    (tmp_path / "proc").mkdir()
    (tmp_path / "proc/cmdline").write_text("BOOT_IMAGE=/v root=/dev/vda crashkernel=256M quiet\n")
    s = load_settings(config=None, overrides={"sysroot": str(tmp_path)}, env={})
    words = s.kexec.cmdline.split()
    assert {"irqpoll", "nr_cpus=1", "reset_devices"} <= set(words)
    assert "quiet" not in words and "root=/dev/vda" not in words
