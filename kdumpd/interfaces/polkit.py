"""Whether a D-Bus caller may call an ``org.kdumpd1.Manager`` method: polkit's answer.

:mod:`kdumpd.interfaces.dbus` lets root through without asking and asks
:class:`PolkitAuthority` about everyone else.  One polkit action per kind of call,
declared in ``polkit/org.kdumpd1.policy`` (installed to
``/usr/share/polkit-1/actions``): :data:`METHOD_ACTIONS`.

The question is ``org.freedesktop.PolicyKit1.Authority.CheckAuthorization`` with the
caller's unique bus name as a ``system-bus-name`` subject (polkitd asks the bus for
its uid and pid itself, so the caller cannot lie about them), no details, and
``AllowUserInteraction`` only when the caller's message carried the
``ALLOW_INTERACTIVE_AUTHORIZATION`` flag (``busctl
--allow-interactive-authorization=yes``): a caller that did not ask to be prompted is
never left waiting for a password.

When nobody owns ``org.freedesktop.PolicyKit1`` (no polkitd installed, or not
activatable), the answer is :attr:`Verdict.UNAVAILABLE` and only root may call, as
without polkit; that is said once in the log.  A polkit error or a polkit that does not
answer in time is a denial, never a permission.
"""

from __future__ import annotations

import asyncio
import enum
import logging
from collections.abc import Callable
from typing import Final, Protocol

from dbus_fast import DBusError, Message, MessageFlag, MessageType, Variant
from dbus_fast.aio import MessageBus

log = logging.getLogger("kdumpd.interfaces.polkit")

POLKIT_NAME: Final = "org.freedesktop.PolicyKit1"
AUTHORITY_PATH: Final = "/org/freedesktop/PolicyKit1/Authority"
AUTHORITY_INTERFACE: Final = "org.freedesktop.PolicyKit1.Authority"

#: Reload, Load, Unload: change which crash image is loaded.
ACTION_MANAGE: Final = "org.kdumpd1.manage"
#: Rescan: re-read the CPUs and memory now.
ACTION_RESCAN: Final = "org.kdumpd1.rescan"
#: GetReport: the whole daemon state as JSON.
ACTION_REPORT: Final = "org.kdumpd1.report"
#: ``org.kdumpd1.Manager`` method -> the polkit action that allows it.
METHOD_ACTIONS: Final[dict[str, str]] = {
    "Reload": ACTION_MANAGE,
    "Load": ACTION_MANAGE,
    "Unload": ACTION_MANAGE,
    "Rescan": ACTION_RESCAN,
    "GetReport": ACTION_REPORT,
}

#: CheckAuthorization's flag: polkit may ask the user (through an agent).
ALLOW_USER_INTERACTION: Final = 0x1

# The bus's answers that mean nobody is there to ask (not a denial by polkit).
_ABSENT: Final = frozenset(
    {
        "org.freedesktop.DBus.Error.ServiceUnknown",
        "org.freedesktop.DBus.Error.NameHasNoOwner",
    }
)
_SPAWN_PREFIX: Final = "org.freedesktop.DBus.Error.Spawn."  # activation failed


class Verdict(enum.Enum):
    ALLOWED = "allowed"
    DENIED = "denied"
    #: Allowed after authentication, which the caller did not let polkit ask for.
    CHALLENGE = "authentication required"
    #: polkit is not on the bus: only root may call.
    UNAVAILABLE = "polkit unavailable"


class Authority(Protocol):
    async def check(self, sender: str, action: str, *, interactive: bool) -> Verdict: ...


class PolkitAuthority:
    """Asks polkitd on the bus ``bus()`` returns (the service's current connection,
    which changes when it reconnects)."""

    def __init__(
        self,
        bus: Callable[[], MessageBus],
        *,
        timeout: float = 25.0,
        interactive_timeout: float = 300.0,
    ) -> None:
        self.bus = bus
        self.timeout = timeout
        self.interactive_timeout = interactive_timeout
        self._said_absent = False

    async def check(self, sender: str, action: str, *, interactive: bool) -> Verdict:
        """May the connection ``sender`` do ``action``?"""
        msg = Message(
            destination=POLKIT_NAME,
            path=AUTHORITY_PATH,
            interface=AUTHORITY_INTERFACE,
            member="CheckAuthorization",
            signature="(sa{sv})sa{ss}us",
            body=[
                ["system-bus-name", {"name": Variant("s", sender)}],
                action,
                {},
                ALLOW_USER_INTERACTION if interactive else 0,
                "",
            ],
            # polkitd may only prompt if our own message says it may
            flags=(
                MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION if interactive else MessageFlag.NONE
            ),
        )
        limit = self.interactive_timeout if interactive else self.timeout
        try:
            reply = await asyncio.wait_for(self.bus().call(msg), limit)
        except TimeoutError:
            log.warning("polkit did not answer for %s within %.0f s: denied", action, limit)
            return Verdict.DENIED
        except (DBusError, OSError, EOFError) as err:
            log.warning("cannot ask polkit about %s (%s): denied", action, err)
            return Verdict.DENIED
        assert reply is not None
        if reply.message_type is MessageType.ERROR:
            name = reply.error_name or ""
            if name in _ABSENT or name.startswith(_SPAWN_PREFIX):
                if not self._said_absent:
                    self._said_absent = True
                    log.warning(
                        "polkit (%s) is not on the bus: only root may call kdumpd's "
                        "methods (said once)",
                        POLKIT_NAME,
                    )
                return Verdict.UNAVAILABLE
            text = reply.body[0] if reply.body and isinstance(reply.body[0], str) else ""
            log.warning("polkit refused to check %s: %s %s", action, name, text)
            return Verdict.DENIED
        try:
            authorized, challenge, _details = reply.body[0]
        except (IndexError, TypeError, ValueError):
            log.warning("polkit answered %s with %r: denied", action, reply.body)
            return Verdict.DENIED
        if authorized is True:
            return Verdict.ALLOWED
        return Verdict.CHALLENGE if challenge is True else Verdict.DENIED
