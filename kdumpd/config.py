"""Daemon configuration: ``/etc/kdumpd/kdumpd.toml`` + ``KDUMPD_*`` environment + CLI.

Precedence (highest first): command-line overrides, environment (``KDUMPD_``,
nested keys joined with ``__``, e.g. ``KDUMPD_DEBOUNCE__QUIET_MS=50``), the TOML
file, defaults.  Every model is frozen and rejects unknown keys, so a typo in the
file is an error, not a silently ignored setting.  A bad value raises
:class:`~kdumpd.core.errors.InputError` whose message is one line naming the file
(or variable) and the key.

Example file::

    backend = "auto"            # auto | kernel | file | segment | kexec-tools | dry-run
    state_dir = "/run/kdumpd"
    event_source = "auto"       # auto | udev | netlink (the kernel's own uevents)
    dbus = true
    # Prometheus metrics for node_exporter's textfile collector; unset = none.
    # metrics_file = "/var/lib/prometheus/node-exporter/kdumpd.prom"

    [debounce]
    quiet_ms = 100              # apply after this long without events
    max_ms = 1000               # ... but never later than this after the first one

    [elfcorehdr]
    max_cpus = 0                # 0 = size from the kernel (possible CPUs)
    max_ranges = 0              # 0 = size from the kernel (CRASH_MAX_MEMORY_RANGES)

    [kexec]
    kernel = ""                 # "" = /boot/vmlinuz-$(uname -r)
    initrd = ""                 # "" = the kdump initrd of the running kernel
    cmdline = ""                # "" = /proc/cmdline minus crashkernel= plus append
    append = "irqpoll nr_cpus=1 reset_devices acpi_no_memhotplug"
"""

from __future__ import annotations

import logging
import os
import re
import tomllib
from collections.abc import Mapping
from contextvars import ContextVar
from pathlib import Path
from typing import Any, Literal

from pydantic import (
    BaseModel,
    ConfigDict,
    Field,
    ValidationError,
    field_validator,
    model_validator,
)
from pydantic_settings import (
    BaseSettings,
    EnvSettingsSource,
    InitSettingsSource,
    PydanticBaseSettingsSource,
    SettingsConfigDict,
    SettingsError,
)
from pydantic_settings.sources.utils import parse_env_vars

from kdumpd.core.errors import InputError
from kdumpd.system.kdumpconf import DEFAULT_CAPTURE_APPEND

DEFAULT_CONFIG = Path("/etc/kdumpd/kdumpd.toml")
ENV_PREFIX = "KDUMPD_"

# "auto" + kdumpd.daemon.backends.BACKEND_NAMES (a test keeps them equal)
BackendName = Literal["auto", "kernel", "file", "segment", "kexec-tools", "dry-run"]
# "netlink" is the kernel's own uevent multicast group, "udev" udevd's re-broadcast
# (kdumpd.events.udev).  "kernel" (pyudev's name for the netlink group, kdumpd's until
# the back-end of that name made it ambiguous) is still accepted and read as "netlink".
EventSourceName = Literal["auto", "udev", "netlink"]
EVENT_SOURCE_ALIASES: dict[str, EventSourceName] = {"kernel": "netlink"}

log = logging.getLogger("kdumpd.config")


class _Frozen(BaseModel):
    model_config = ConfigDict(frozen=True, extra="forbid")


class DebounceSettings(_Frozen):
    quiet_ms: int = Field(default=100, ge=0, le=60_000)
    max_ms: int = Field(default=1000, ge=1, le=600_000)

    @model_validator(mode="after")
    def _bound_not_below_quiet(self) -> DebounceSettings:
        if self.max_ms < self.quiet_ms:
            raise ValueError(f"max_ms ({self.max_ms}) must be >= quiet_ms ({self.quiet_ms})")
        return self


class ElfcorehdrSettings(_Frozen):
    max_cpus: int = Field(default=0, ge=0, le=65_536)
    max_ranges: int = Field(default=0, ge=0, le=1_048_576)


class KexecSettings(_Frozen):
    kernel: str = ""
    initrd: str = ""
    cmdline: str = ""
    append: str = DEFAULT_CAPTURE_APPEND


class Settings(BaseSettings):
    model_config = SettingsConfigDict(
        env_prefix=ENV_PREFIX,
        env_nested_delimiter="__",
        extra="forbid",
        frozen=True,
    )

    backend: BackendName = "auto"
    sysroot: Path = Path("/")
    state_dir: Path = Path("/run/kdumpd")
    event_source: EventSourceName = "auto"
    dbus: bool = True
    # Prometheus text file (kdumpd.interfaces.metrics); None (or "") writes none.
    metrics_file: Path | None = None
    debounce: DebounceSettings = Field(default_factory=DebounceSettings)
    elfcorehdr: ElfcorehdrSettings = Field(default_factory=ElfcorehdrSettings)
    kexec: KexecSettings = Field(default_factory=KexecSettings)

    @field_validator("event_source", mode="before")
    @classmethod
    def _deprecated_source_name(cls, value: Any) -> Any:
        return EVENT_SOURCE_ALIASES.get(value, value) if isinstance(value, str) else value

    @field_validator("metrics_file", mode="before")
    @classmethod
    def _empty_is_off(cls, value: Any) -> Any:
        return None if value == "" else value

    @classmethod
    def settings_customise_sources(
        cls,
        settings_cls: type[BaseSettings],
        init_settings: PydanticBaseSettingsSource,
        env_settings: PydanticBaseSettingsSource,
        dotenv_settings: PydanticBaseSettingsSource,
        file_secret_settings: PydanticBaseSettingsSource,
    ) -> tuple[PydanticBaseSettingsSource, ...]:
        """Command line (init), then environment, then the TOML file layer (set by
        :func:`load_settings`; empty when ``Settings`` is built directly)."""
        return (
            init_settings,
            _Env(settings_cls),
            InitSettingsSource(settings_cls, _FILE_LAYER.get() or {}),
        )


_FILE_LAYER: ContextVar[dict[str, Any] | None] = ContextVar("kdumpd_config_file", default=None)
_ENV: ContextVar[Mapping[str, str] | None] = ContextVar("kdumpd_config_env", default=None)


class _Env(EnvSettingsSource):
    """The environment source, reading a given mapping instead of os.environ in tests."""

    def _load_env_vars(self) -> Mapping[str, str | None]:
        env = _ENV.get()
        if env is None:
            return super()._load_env_vars()
        return parse_env_vars(env, self.case_sensitive, self.env_ignore_empty, None)


def _read_toml(path: Path) -> dict[str, Any]:
    """The TOML file as a dict; every failure is one InputError naming the file."""
    try:
        with path.open("rb") as fh:
            raw = fh.read()
    except OSError as err:
        raise InputError(str(path), err.strerror or str(err)) from None
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as err:
        line = raw.count(b"\n", 0, err.start) + 1
        raise InputError(str(path), f"not valid UTF-8 (byte {raw[err.start]:#04x})", line) from None
    try:
        return tomllib.loads(text)
    except tomllib.TOMLDecodeError as err:
        raise InputError(str(path), f"not valid TOML: {err}") from None
    except (ValueError, RecursionError) as err:
        # tomllib hands a 5,000-digit integer to int(), which refuses more than 4,300
        # digits with a plain ValueError; arrays nested thousands deep exhaust the stack
        problem = str(err).split(";")[0][:120] or type(err).__name__
        raise InputError(str(path), f"not valid TOML: {problem}") from None


def _nested_get(data: Mapping[str, Any], loc: tuple[str | int, ...]) -> bool:
    cur: Any = data
    for part in loc:
        if not isinstance(cur, Mapping) or part not in cur:
            return False
        cur = cur[part]
    return True


def _origin(
    loc: tuple[str | int, ...],
    overrides: Mapping[str, Any],
    file_data: Mapping[str, Any],
    path: Path | None,
    env: Mapping[str, str],
) -> str:
    if _nested_get(overrides, loc):
        return "command line"
    var = ENV_PREFIX + "__".join(str(p) for p in loc).upper()
    if var in env:
        return var
    if loc and isinstance(loc[0], str) and var.split("__")[0] in env:
        return var.split("__")[0]
    if path is not None and _nested_get(file_data, loc):
        return str(path)
    return str(path) if path is not None else "settings"


def load_settings(
    config: str | Path | None = None,
    overrides: Mapping[str, Any] | None = None,
    *,
    env: Mapping[str, str] | None = None,
) -> Settings:
    """Build :class:`Settings` from file, environment and CLI overrides.

    ``config`` None reads :data:`DEFAULT_CONFIG` if it exists (a missing default
    file is fine; a missing explicit file is an error).  ``overrides`` holds
    command-line values (nested as dicts, ``None`` values are ignored).
    ``env`` replaces ``os.environ`` (tests).
    """
    path: Path | None = Path(config) if config is not None else None
    if path is None and DEFAULT_CONFIG.exists():
        path = DEFAULT_CONFIG
    file_data: dict[str, Any] = _read_toml(path) if path is not None else {}
    clean = _drop_none(dict(overrides or {}))
    environ = dict(os.environ if env is None else env)

    if path is not None and file_data:
        _check_file_alone(file_data, path)
    tok_file = _FILE_LAYER.set(file_data)
    tok_env = _ENV.set(env)
    try:
        layered = Settings(**clean)
    except SettingsError as err:  # e.g. KDUMPD_DEBOUNCE='{bad': not JSON
        m = re.search(r'field "([^"]+)"', str(err))
        field = m.group(1) if m else ""
        var = ENV_PREFIX + field.upper() if field else "environment"
        cause = f": {err.__cause__}" if err.__cause__ is not None else ""
        raise InputError(var, f"cannot parse the value{cause}") from None
    except ValidationError as err:
        first = err.errors()[0]
        loc = tuple(first.get("loc", ()))
        key = ".".join(str(p) for p in loc) or "(top level)"
        where = _origin(loc, clean, file_data, path, environ)
        msg = first.get("msg", "invalid value")
        if first.get("type") == "extra_forbidden":
            msg = "unknown key"
        raise InputError(where, f"{key}: {msg}") from None
    finally:
        _FILE_LAYER.reset(tok_file)
        _ENV.reset(tok_env)
    _warn_deprecated_source(clean, file_data, path, environ)
    return _with_kdump_utils(layered)


def _warn_deprecated_source(
    overrides: Mapping[str, Any],
    file_data: Mapping[str, Any],
    path: Path | None,
    env: Mapping[str, str],
) -> None:
    """One warning when the event source in effect was spelled with a deprecated
    name (the validator has already mapped it); the layer that set it is named."""
    var = ENV_PREFIX + "EVENT_SOURCE"
    if "event_source" in overrides:
        raw, where = overrides["event_source"], "command line"
    elif var in env:
        raw, where = env[var], var
    elif "event_source" in file_data:
        raw, where = file_data["event_source"], str(path)
    else:
        return
    if isinstance(raw, str) and raw in EVENT_SOURCE_ALIASES:
        log.warning(
            "%s: event source %r is deprecated, read as %r",
            where,
            raw,
            EVENT_SOURCE_ALIASES[raw],
        )


def _check_file_alone(file_data: dict[str, Any], path: Path) -> None:
    """Validate the file's own values, so a bad value is reported even where the
    environment or the command line overrides that key (it would bite at the next
    start without the override).  Cross-field checks (``max_ms >= quiet_ms``) are
    left to the layered settings: another layer may legitimately complete them."""
    tok_file = _FILE_LAYER.set(file_data)
    tok_env = _ENV.set({})
    try:
        Settings()
    except ValidationError as err:
        for first in err.errors():
            loc = tuple(first.get("loc", ()))
            forbidden = first.get("type") == "extra_forbidden"
            if not forbidden and isinstance(_nested_value(file_data, loc), Mapping):
                continue  # a table-level (cross-field) error
            key = ".".join(str(p) for p in loc) or "(top level)"
            msg = "unknown key" if forbidden else first.get("msg", "invalid value")
            raise InputError(str(path), f"{key}: {msg}") from None
    finally:
        _FILE_LAYER.reset(tok_file)
        _ENV.reset(tok_env)


def _nested_value(data: Mapping[str, Any], loc: tuple[str | int, ...]) -> Any:
    cur: Any = data
    for part in loc:
        if not isinstance(cur, Mapping) or part not in cur:
            return None
        cur = cur[part]
    return cur


def _with_kdump_utils(settings: Settings) -> Settings:
    """Fill empty ``[kexec]`` fields from kdump-utils' ``/etc/sysconfig/kdump`` and
    ``/etc/kdump.conf`` below the sysroot, when they exist (read only; a bad line is an
    InputError naming file:line, so a SIGHUP keeps the running configuration)."""
    from kdumpd.system.kdumpconf import kexec_defaults

    k = settings.kexec
    extra = kexec_defaults(settings.sysroot, k.kernel, k.initrd, k.cmdline, k.append)
    if not extra:
        return settings
    return settings.model_copy(update={"kexec": k.model_copy(update=extra)})


def _drop_none(d: dict[str, Any]) -> dict[str, Any]:
    out: dict[str, Any] = {}
    for k, v in d.items():
        if v is None:
            continue
        if isinstance(v, dict):
            sub = _drop_none(v)
            if sub:
                out[k] = sub
        else:
            out[k] = v
    return out
