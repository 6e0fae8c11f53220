"""A small synchronous client of ``org.kdumpd1`` for the command-line tools.

Each call opens its own connection inside ``asyncio.run`` with a short timeout, so a
CLI never hangs on a wedged bus.  ``bus_address`` ``None`` means the system bus
(which honours ``DBUS_SYSTEM_BUS_ADDRESS``).
"""

from __future__ import annotations

import asyncio
from typing import Any

from dbus_fast import BusType, DBusError, Message, MessageFlag, MessageType
from dbus_fast.aio import MessageBus

from kdumpd.core.errors import KdumpdError
from kdumpd.interfaces.dbus import (
    BUS_NAME,
    ERROR_ACCESS_DENIED,
    ERROR_BUSY,
    ERROR_FAILED,
    INTERFACE,
    OBJECT_PATH,
    PROPERTY_FIELDS,
)

DEFAULT_TIMEOUT = 5.0

_NOT_THERE = frozenset(
    {
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NameHasNoOwner",
        "org.freedesktop.DBus.Error.NoReply",
        "org.freedesktop.DBus.Error.UnknownObject",
        "org.freedesktop.DBus.Error.Spawn.ServiceNotFound",
        "org.freedesktop.DBus.Error.Spawn.ChildExited",
    }
)


#: What the bus itself answers when its policy refuses a call (not the daemon).
POLICY_ACCESS_DENIED = "org.freedesktop.DBus.Error.AccessDenied"


class DaemonUnreachable(KdumpdError):
    """No bus, or nobody owns ``org.kdumpd1``."""


class DaemonError(KdumpdError):
    """The daemon (or the bus on its behalf) answered with a D-Bus error."""

    def __init__(self, name: str, text: str) -> None:
        self.name = name
        self.text = text
        super().__init__(f"{text} ({name})" if text else name)


class DaemonAccessDenied(DaemonError):
    """``org.kdumpd1.Error.AccessDenied``: the caller is not root and polkit does not allow it."""


class DaemonBusy(DaemonError):
    """``org.kdumpd1.Error.Busy``: a conflicting operation is running."""


class DaemonFailed(DaemonError):
    """``org.kdumpd1.Error.Failed``: the operation failed (the text says why)."""


#: The class each ``org.kdumpd1`` error name is raised as (the server's
#: :data:`kdumpd.interfaces.dbus.ERRORS` maps classes to these names).
ERROR_CLASSES: dict[str, type[DaemonError]] = {
    ERROR_ACCESS_DENIED: DaemonAccessDenied,
    ERROR_BUSY: DaemonBusy,
    ERROR_FAILED: DaemonFailed,
}


async def _connect(bus_address: str | None) -> MessageBus:
    try:
        if bus_address:
            return await MessageBus(bus_address=bus_address).connect()
        return await MessageBus(bus_type=BusType.SYSTEM).connect()
    except (OSError, DBusError, ValueError, EOFError) as err:
        where = f"D-Bus at {bus_address}" if bus_address else "the system bus"
        raise DaemonUnreachable(f"cannot connect to {where}: {err}") from None


def _check(reply: Message) -> Message:
    if reply.message_type is MessageType.ERROR:
        name = reply.error_name or "org.freedesktop.DBus.Error.Failed"
        text = str(reply.body[0]) if reply.body else ""
        if name in _NOT_THERE:
            raise DaemonUnreachable(f"kdumpd is not running ({name})")
        if name == POLICY_ACCESS_DENIED:
            # dbus-daemon's own text ("Rejected send message, 2 matched rules; ...")
            # says nothing to a user; the bus policy lets only root call the methods.
            raise DaemonAccessDenied(
                name, f"permission denied: only root may call {INTERFACE} methods"
            )
        raise ERROR_CLASSES.get(name, DaemonError)(name, text)
    return reply


async def _call_async(
    bus_address: str | None,
    member: str,
    interface: str,
    signature: str,
    body: list[Any],
    *,
    auto_start: bool = False,
) -> list[Any]:
    """One method call.  Without ``auto_start`` the call carries NO_AUTO_START, so a
    query never bus-activates kdumpd.service (whose Conflicts= would stop kdump.service
    and unload its crash kernel)."""
    bus = await _connect(bus_address)
    try:
        reply = await bus.call(
            Message(
                destination=BUS_NAME,
                path=OBJECT_PATH,
                interface=interface,
                member=member,
                signature=signature,
                body=body,
                flags=MessageFlag.NONE if auto_start else MessageFlag.NO_AUTOSTART,
            )
        )
        return list(_check(reply).body)
    finally:
        bus.disconnect()


def _run(coro: Any, timeout: float) -> Any:
    async def bounded() -> Any:
        try:
            return await asyncio.wait_for(coro, timeout)
        except TimeoutError:
            raise DaemonUnreachable(f"no answer from kdumpd within {timeout:g} s") from None

    return asyncio.run(bounded())


def call(
    member: str,
    *,
    bus_address: str | None = None,
    timeout: float = DEFAULT_TIMEOUT,
    auto_start: bool = False,
) -> Any:
    """Call ``org.kdumpd1.Manager.<member>()``; returns the first reply value or None.
    ``auto_start`` lets the bus activate the daemon (only ``kdumpctl start`` wants it)."""
    body = _run(_call_async(bus_address, member, INTERFACE, "", [], auto_start=auto_start), timeout)
    return body[0] if body else None


def get_state(
    *, bus_address: str | None = None, timeout: float = DEFAULT_TIMEOUT
) -> dict[str, Any]:
    """All properties, keyed by :class:`~kdumpd.daemon.state.DaemonState` field name
    (so the result has the shape of ``DaemonState.to_json()``)."""
    body = _run(
        _call_async(bus_address, "GetAll", "org.freedesktop.DBus.Properties", "s", [INTERFACE]),
        timeout,
    )
    props: dict[str, Any] = {k: v.value for k, v in body[0].items()}
    out: dict[str, Any] = {}
    for prop, field in PROPERTY_FIELDS.items():
        if prop in props:
            value = props[prop]
            if isinstance(value, list):
                value = [list(v) if isinstance(v, tuple) else v for v in value]
            out[field] = value
    return out
