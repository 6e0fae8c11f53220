"""The ``org.kdumpd1.Manager`` D-Bus service (dbus-fast, asyncio).

The service observes :class:`kdumpd.daemon.state.StateStore` and never drives a
back-end itself: methods are forwarded to the reconciler's
:class:`~kdumpd.daemon.control.Controller`.

* Properties are read from ``store.current`` on every ``Get``/``GetAll`` (so a read is
  never stale) and ``PropertiesChanged`` is coalesced: every change between two
  emissions is merged into one signal, and emissions are at most one per
  ``min_interval`` seconds (default 10 ms).  A 3,840-event storm that updates the
  store thousands of times therefore costs a handful of signals, not thousands.
* ``ImageUpdated(t generation, s trigger)`` is emitted once per applied image.
* Who may call methods is decided here: the bus policy (``dbus/org.kdumpd1.conf``) lets
  every caller reach them.  A message handler records the sender of each method call
  (and whether it allows interactive authorization) in
  :class:`~contextvars.ContextVar` s, which the method task inherits; the method asks
  the bus for ``GetConnectionUnixUser(sender)``.  Root always may; anyone else may
  when polkit says so for the method's action (:mod:`kdumpd.interfaces.polkit`);
  without polkitd on the bus, only root may.
* Errors reach the caller as ``org.kdumpd1.Error.*`` with one line of text; a
  Python traceback never leaves the process (unexpected exceptions are logged
  locally and answered with ``org.kdumpd1.Error.Failed``).
* An unexpected disconnect from the bus: the service reconnects with a capped
  backoff, re-exports the object and owns the name again (the daemon runs with
  ``reconnect=True``); with ``reconnect=False``, :meth:`DBusService.wait_disconnected`
  raises :class:`BusDisconnected` instead.
"""

from __future__ import annotations

import asyncio
import contextvars
import json
import logging
import threading
from collections import OrderedDict
from collections.abc import Awaitable, Callable, Mapping
from dataclasses import dataclass
from types import TracebackType
from typing import Annotated, Any, Final

from dbus_fast import (
    BusType,
    DBusError,
    Message,
    MessageFlag,
    MessageType,
    NameFlag,
    RequestNameReply,
)
from dbus_fast.aio import MessageBus
from dbus_fast.annotations import (
    DBusSignature,
    DBusStr,
)
from dbus_fast.constants import ErrorType, PropertyAccess
from dbus_fast.service import ServiceInterface, dbus_method, dbus_property, dbus_signal

from kdumpd.core.errors import KdumpdError
from kdumpd.daemon.control import Busy, Controller
from kdumpd.daemon.state import DaemonState, StateStore
from kdumpd.interfaces.polkit import METHOD_ACTIONS, Authority, PolkitAuthority, Verdict

log = logging.getLogger("kdumpd.interfaces.dbus")

BUS_NAME: Final = "org.kdumpd1"
OBJECT_PATH: Final = "/org/kdumpd1"
INTERFACE: Final = "org.kdumpd1.Manager"

ERROR_ACCESS_DENIED: Final = "org.kdumpd1.Error.AccessDenied"
ERROR_BUSY: Final = "org.kdumpd1.Error.Busy"
ERROR_FAILED: Final = "org.kdumpd1.Error.Failed"


class AccessDenied(KdumpdError):
    """The caller may not call this method (not root, and polkit does not allow it)."""


#: The D-Bus error each error class is answered with, most specific first;
#: :mod:`kdumpd.interfaces.dbusclient` maps the names back to classes.
ERRORS: Final[tuple[tuple[type[KdumpdError], str], ...]] = (
    (AccessDenied, ERROR_ACCESS_DENIED),
    (Busy, ERROR_BUSY),
    (KdumpdError, ERROR_FAILED),
)


def error_name(err: KdumpdError) -> str:
    """The ``org.kdumpd1.Error.*`` name for ``err``."""
    return next(name for cls, name in ERRORS if isinstance(err, cls))


# Methods without a reply body (dbus-fast reads an empty signature).
DBusNoReply = Annotated[None, DBusSignature("")]
DBusImageUpdated = Annotated[tuple[int, str], DBusSignature("ts")]

_U64_MAX: Final = (1 << 64) - 1


@dataclass(frozen=True, slots=True)
class Property:
    """One read-only property: its D-Bus name, the DaemonState field it shows, and its
    D-Bus signature."""

    name: str
    field: str
    signature: str


# Every property of org.kdumpd1.Manager, declared once (documentation order).
PROPERTIES: Final = (
    Property("State", "state", "s"),
    Property("Backend", "backend", "s"),
    Property("BackendReason", "backend_reason", "s"),
    Property("Generation", "generation", "t"),
    Property("LastUpdateUSec", "last_update_usec", "t"),
    Property("LastUpdateDurationUSec", "last_update_duration_usec", "t"),
    Property("LastLoadGapUSec", "last_load_gap_usec", "t"),
    Property("EventsReceived", "events_received", "t"),
    Property("EventsCoalesced", "events_coalesced", "t"),
    Property("Loads", "loads", "t"),
    Property("PresentCPUs", "present_cpus", "au"),
    Property("CoveredCPUs", "covered_cpus", "au"),
    Property("MemoryRanges", "memory_ranges", "a(tt)"),
    Property("CoveredRanges", "covered_ranges", "a(tt)"),
    Property("Stale", "stale", "b"),
    Property("StaleReason", "stale_reason", "s"),
    Property("ElfcorehdrUsed", "elfcorehdr_used", "t"),
    Property("ElfcorehdrCapacity", "elfcorehdr_capacity", "t"),
    Property("CrashKernelSize", "crash_kernel_size", "t"),
    Property("KernelHotplugSupport", "kernel_hotplug_support", "b"),
    Property("LastError", "last_error", "s"),
    Property("LoadLimitPanic", "load_limit_panic", "x"),
)
#: D-Bus property name -> DaemonState field.
PROPERTY_FIELDS: Final = {p.name: p.field for p in PROPERTIES}
_BY_NAME: Final = {p.name: p for p in PROPERTIES}
_FIELD_TO_PROPERTY: Final = {p.field: p.name for p in PROPERTIES}

# Method name -> input signature (all methods take no arguments).
METHOD_SIGNATURES: Final[dict[str, str]] = {
    "Reload": "",
    "Rescan": "",
    "Load": "",
    "Unload": "",
    "GetReport": "",
}


class BusDisconnected(KdumpdError):
    """The connection to the bus ended without :meth:`DBusService.stop`."""


UidLookup = Callable[[str], Awaitable[int]]

# Sender (unique bus name) of the method call being dispatched; set by the
# message handler, inherited by the method task dbus-fast creates synchronously.
_current_sender: contextvars.ContextVar[str | None] = contextvars.ContextVar(
    "kdumpd_dbus_sender", default=None
)
# ... and whether that call carried ALLOW_INTERACTIVE_AUTHORIZATION.
_current_interactive: contextvars.ContextVar[bool] = contextvars.ContextVar(
    "kdumpd_dbus_interactive", default=False
)


def _u64(value: int) -> int:
    return min(max(int(value), 0), _U64_MAX)


def property_value(state: DaemonState, prop: str) -> Any:
    """The wire value of property ``prop`` for ``state`` (clamped to its D-Bus type)."""
    p = _BY_NAME[prop]
    value = getattr(state, p.field)
    if p.signature == "s":
        return str(value)
    if p.signature == "b":
        return bool(value)
    if p.signature == "au":
        return [min(max(int(c), 0), 0xFFFFFFFF) for c in value]
    if p.signature == "a(tt)":
        return [(_u64(a), _u64(b)) for a, b in value]
    if p.signature == "x":
        return min(max(int(value), -(1 << 63)), (1 << 63) - 1)
    return _u64(value)


class DenialLog:
    """Logs denied method calls without letting a caller flood the journal: the
    first ``burst`` denials of each ``interval`` are one WARNING each (method, uid,
    sender); the rest of the interval is counted and summarised in one WARNING when
    it ends (per method and uid).  1,000 denied calls in a second are six lines."""

    def __init__(
        self,
        *,
        burst: int = 5,
        interval: float = 60.0,
        clock: Callable[[], float] | None = None,
    ) -> None:
        self.burst = burst
        self.interval = interval
        self._clock = clock
        self._window_start: float | None = None
        self._logged = 0
        self._suppressed: dict[tuple[str, int], int] = {}
        self._timer: asyncio.TimerHandle | None = None

    def _now(self) -> float:
        if self._clock is not None:
            return self._clock()
        return asyncio.get_running_loop().time()

    def denied(self, method: str, uid: int, sender: str, why: str = "") -> None:
        """One denial of ``method`` to ``uid``; ``why`` is what the caller was told."""
        now = self._now()
        if self._window_start is None or now - self._window_start >= self.interval:
            self.flush()
            self._window_start = now
            self._logged = 0
        if self._logged < self.burst:
            self._logged += 1
            log.warning(
                "denied %s to uid %d (%s): %s",
                method,
                uid,
                sender,
                why or f"only root may call {INTERFACE} methods",
                extra={"CALLER_UID": uid, "SENDER": sender, "DBUS_METHOD": method},
            )
            return
        key = (method, uid)
        self._suppressed[key] = self._suppressed.get(key, 0) + 1
        if self._timer is None and self._clock is None:
            left = self.interval - (now - self._window_start)
            self._timer = asyncio.get_running_loop().call_later(max(left, 0.0), self.flush)

    def flush(self) -> None:
        """Log the summary of the suppressed denials (if any) and start over."""
        if self._timer is not None:
            self._timer.cancel()
            self._timer = None
        if not self._suppressed:
            return
        total = sum(self._suppressed.values())
        detail = ", ".join(
            f"{method} x{n} by uid {uid}" for (method, uid), n in sorted(self._suppressed.items())
        )
        log.warning(
            "denied %d more method calls in the last %.0f s (not logged one by one): %s",
            total,
            self.interval,
            detail,
            extra={"DENIED_SUPPRESSED": total},
        )
        self._suppressed.clear()
        self._window_start = None


class ManagerInterface(ServiceInterface):
    """``org.kdumpd1.Manager``."""

    def __init__(
        self,
        store: StateStore,
        controller: Controller,
        uid_lookup: UidLookup,
        *,
        min_interval: float = 0.01,
        authority: Authority | None = None,
    ) -> None:
        super().__init__(INTERFACE)
        self._store = store
        self._controller = controller
        self._uid_lookup = uid_lookup
        self._authority = authority  # None: only root may call
        self._min_interval = min_interval
        self._denials = DenialLog()
        self._pending: set[str] = set()
        self._flush_handle: asyncio.Handle | asyncio.TimerHandle | None = None
        self._last_emit = 0.0
        self._loop: asyncio.AbstractEventLoop | None = None
        self._loop_thread: int | None = None
        self.emitted_properties_changed = 0  # counter for tests and the benchmark
        # Name the signal's arguments in introspection (dbus-fast leaves them unnamed).
        for sig in ServiceInterface._get_signals(self):
            if sig.name == "ImageUpdated":
                for arg, arg_name in zip(
                    sig.introspection.args, ("generation", "trigger"), strict=True
                ):
                    arg.name = arg_name
        for meth in ServiceInterface._get_methods(self):
            if meth.name == "GetReport":
                meth.introspection.out_args[0].name = "report"

    # -- wiring --------------------------------------------------------------

    def attach(self, loop: asyncio.AbstractEventLoop) -> None:
        self._loop = loop
        self._loop_thread = threading.get_ident()
        self._store.subscribe(self._on_state)
        self._store.on_image_updated(self._on_image)

    def detach(self) -> None:
        self._loop = None
        self._denials.flush()
        if self._flush_handle is not None:
            self._flush_handle.cancel()
            self._flush_handle = None

    def _call_in_loop(self, fn: Callable[[], None]) -> None:
        loop = self._loop
        if loop is None or loop.is_closed():
            return
        if threading.get_ident() == self._loop_thread:
            fn()
        else:
            loop.call_soon_threadsafe(fn)

    def _on_state(self, _state: DaemonState, changed: Mapping[str, Any]) -> None:
        names = {_FIELD_TO_PROPERTY[f] for f in changed if f in _FIELD_TO_PROPERTY}
        if names:
            self._call_in_loop(lambda: self._mark(names))

    def _mark(self, names: set[str]) -> None:
        self._pending |= names
        loop = self._loop
        if self._flush_handle is not None or loop is None:
            return
        wait = self._last_emit + self._min_interval - loop.time()
        if wait > 0:
            self._flush_handle = loop.call_later(wait, self._flush)
        else:
            self._flush_handle = loop.call_soon(self._flush)

    def _flush(self) -> None:
        self._flush_handle = None
        if not self._pending or self._loop is None:
            return
        state = self._store.current
        changed = {name: property_value(state, name) for name in sorted(self._pending)}
        self._pending.clear()
        self._last_emit = self._loop.time()
        self.emitted_properties_changed += 1
        try:
            self.emit_properties_changed(changed)
        except Exception:  # a marshalling bug must not kill the reconciler's caller
            log.exception("cannot emit PropertiesChanged")

    def flush_now(self) -> None:
        """Emit pending ``PropertiesChanged`` immediately (used on shutdown)."""
        if self._flush_handle is not None:
            self._flush_handle.cancel()
        self._flush()

    def announce_all(self) -> None:
        """Emit every property once (after a reconnect)."""
        self._call_in_loop(lambda: self._mark(set(PROPERTY_FIELDS)))

    def _on_image(self, generation: int, trigger: str) -> None:
        def emit() -> None:
            # Properties first, so a client reacting to ImageUpdated reads new values
            # from its PropertiesChanged cache.
            self.flush_now()
            try:
                self.ImageUpdated(_u64(generation), str(trigger))
            except Exception:
                log.exception("cannot emit ImageUpdated")

        self._call_in_loop(emit)

    # -- access control and error mapping ------------------------------------

    async def _authorize(self, method: str) -> None:
        """Root may; anyone else when polkit allows ``method``'s action."""
        sender = _current_sender.get()
        if sender is None:
            raise AccessDenied("caller unknown")
        try:
            uid = await self._uid_lookup(sender)
        except DBusError as err:
            raise AccessDenied(f"cannot identify caller {sender}") from err
        if uid == 0:
            return
        action = METHOD_ACTIONS[method]
        verdict = Verdict.UNAVAILABLE
        if self._authority is not None:
            verdict = await self._authority.check(
                sender, action, interactive=_current_interactive.get()
            )
        extra = {
            "CALLER_UID": uid,
            "SENDER": sender,
            "DBUS_METHOD": method,
            "POLKIT_ACTION": action,
        }
        if verdict is Verdict.ALLOWED:
            log.info(
                "%s by uid %d (%s): polkit allows %s", method, uid, sender, action, extra=extra
            )
            return
        if verdict is Verdict.UNAVAILABLE:
            why = f"only root may call {INTERFACE} methods (polkit is not running)"
        elif verdict is Verdict.CHALLENGE:
            why = (
                f"{method} needs authentication for {action}: call it with interactive "
                "authorization allowed"
            )
        else:
            why = f"not authorized for {action} (polkit)"
        self._denials.denied(method, uid, sender, why)
        raise AccessDenied(why)

    async def _run(self, what: str, op: Callable[[], Awaitable[Any]]) -> Any:
        try:
            await self._authorize(what)
            return await op()
        except DBusError:
            raise
        except (AccessDenied, Busy) as err:  # the text says it all
            raise DBusError(error_name(err), str(err)) from None
        except KdumpdError as err:
            raise DBusError(error_name(err), f"{what}: {err}") from None
        except Exception:
            log.exception("%s failed", what)
            raise DBusError(ERROR_FAILED, f"{what}: internal error (see the journal)") from None

    # -- methods -------------------------------------------------------------

    @dbus_method()
    async def Reload(self) -> DBusNoReply:
        await self._run("Reload", self._controller.reload)

    @dbus_method()
    async def Rescan(self) -> DBusNoReply:
        await self._run("Rescan", self._controller.rescan)

    @dbus_method()
    async def Load(self) -> DBusNoReply:
        await self._run("Load", self._controller.load)

    @dbus_method()
    async def Unload(self) -> DBusNoReply:
        await self._run("Unload", self._controller.unload)

    @dbus_method()
    async def GetReport(self) -> DBusStr:
        report = await self._run("GetReport", self._controller.report)
        try:
            return json.dumps(report, sort_keys=True, default=str)
        except (TypeError, ValueError) as err:
            raise DBusError(ERROR_FAILED, f"GetReport: cannot encode report: {err}") from None

    # -- signals -------------------------------------------------------------

    @dbus_signal()
    def ImageUpdated(self, generation: int, trigger: str) -> DBusImageUpdated:
        return (generation, trigger)


def _getter(prop: Property) -> Callable[[ManagerInterface], Any]:
    def get(self: ManagerInterface) -> Any:
        return property_value(self._store.current, prop.name)

    get.__name__ = get.__qualname__ = prop.name
    get.__annotations__ = {"return": prop.signature}  # dbus-fast reads the signature here
    return get


for _prop in PROPERTIES:
    setattr(
        ManagerInterface,
        _prop.name,
        dbus_property(access=PropertyAccess.READ)(_getter(_prop)),
    )


class DBusService:
    """A running ``org.kdumpd1`` service.  Use as ``async with`` or call :meth:`stop`.

    If the connection to the bus is lost (dbus-fast closes it on some socket errors,
    e.g. EAGAIN on a full send buffer, and the bus may restart), the service either
    reconnects -- with a capped backoff, re-exporting the object and re-owning the
    name -- or, with ``reconnect=False``, makes :meth:`wait_disconnected` raise
    :class:`BusDisconnected` so the daemon can exit non-zero and let systemd
    restart it.
    """

    interface: ManagerInterface

    def __init__(
        self,
        bus: MessageBus,
        *,
        bus_address: str | None = None,
        name: str = BUS_NAME,
        reconnect: bool = True,
        max_backoff: float = 5.0,
    ) -> None:
        self.bus = bus
        self.bus_address = bus_address
        self.name = name
        self.reconnect = reconnect
        self.max_backoff = max_backoff
        self.reconnects = 0
        self._stopping = False
        self._uid_cache: OrderedDict[str, int] = OrderedDict()
        self._done: asyncio.Future[None] = asyncio.get_running_loop().create_future()
        self._supervisor: asyncio.Task[None] | None = None

    async def lookup_uid(self, sender: str) -> int:
        """uid of the connection ``sender``.  Unique names are never reused on a bus,
        so the answer is cached (bounded)."""
        cached = self._uid_cache.get(sender)
        if cached is not None:
            return cached
        reply = await self.bus.call(
            Message(
                destination="org.freedesktop.DBus",
                path="/org/freedesktop/DBus",
                interface="org.freedesktop.DBus",
                member="GetConnectionUnixUser",
                signature="s",
                body=[sender],
            )
        )
        if reply.message_type is MessageType.ERROR:
            raise DBusError(reply.error_name or ErrorType.FAILED, str(reply.body))
        uid = int(reply.body[0])
        self._uid_cache[sender] = uid
        while len(self._uid_cache) > 256:
            self._uid_cache.popitem(last=False)
        return uid

    def message_handler(self, msg: Message) -> Message | bool | None:
        """Runs before dispatch: remember the sender; answer wrong signatures with
        InvalidArgs instead of dbus-fast's UnknownMethod."""
        if (
            msg.message_type is not MessageType.METHOD_CALL
            or msg.path != OBJECT_PATH
            or msg.interface not in (INTERFACE, None)
        ):
            return None
        _current_sender.set(msg.sender)
        _current_interactive.set(bool(msg.flags & MessageFlag.ALLOW_INTERACTIVE_AUTHORIZATION))
        expected = METHOD_SIGNATURES.get(msg.member or "")
        if expected is not None and msg.signature != expected:
            return Message.new_error(
                msg,
                ErrorType.INVALID_ARGS.value,
                f"{INTERFACE}.{msg.member} takes signature {expected!r}, got {msg.signature!r}",
            )
        return None

    # -- connection life cycle -------------------------------------------------

    async def _own(self, bus: MessageBus) -> None:
        """Export the object on ``bus`` and own the name; KdumpdError if refused."""
        bus.add_message_handler(self.message_handler)
        bus.export(OBJECT_PATH, self.interface)
        try:
            reply = await bus.request_name(self.name, NameFlag.DO_NOT_QUEUE)
        except DBusError as err:
            raise KdumpdError(f"cannot own D-Bus name {self.name}: {err}") from None
        if reply not in (RequestNameReply.PRIMARY_OWNER, RequestNameReply.ALREADY_OWNER):
            raise KdumpdError(f"cannot own D-Bus name {self.name}: {reply.name.lower()}")

    def _drop(self, bus: MessageBus) -> None:
        try:
            bus.unexport(OBJECT_PATH, self.interface)
        except Exception:  # the InterfacesRemoved signal cannot go out on a dead bus
            log.debug("unexport failed", exc_info=True)
        bus.remove_message_handler(self.message_handler)
        if bus.connected:
            bus.disconnect()

    def start_supervisor(self) -> None:
        self._supervisor = asyncio.ensure_future(self._supervise())

    async def _supervise(self) -> None:
        while True:
            bus = self.bus
            err: BaseException | None = None
            try:
                await _disconnected(bus)
            except Exception as e:
                err = e
            if self._stopping:
                return
            why = f"{err}" if err else "closed by the bus"
            self._drop(bus)
            self._uid_cache.clear()
            if not self.reconnect:
                log.error("D-Bus connection lost (%s)", why)
                if not self._done.done():
                    self._done.set_exception(BusDisconnected(f"D-Bus connection lost: {why}"))
                return
            log.error("D-Bus connection lost (%s); reconnecting", why)
            delay = 0.1
            while not self._stopping:
                await asyncio.sleep(delay)
                delay = min(delay * 2, self.max_backoff)
                try:
                    new = await connect_bus(self.bus_address)
                except KdumpdError as e:
                    log.warning("%s; retrying in %.1f s", e, delay)
                    continue
                try:
                    await self._own(new)
                except KdumpdError as e:
                    self._drop(new)
                    log.warning("%s; retrying in %.1f s", e, delay)
                    continue
                self.bus = new
                self.reconnects += 1
                log.info("D-Bus service %s back on the bus", self.name)
                # Clients lost their cache with the old connection; announce every
                # property once so they need not poll.
                self.interface.announce_all()
                break

    async def stop(self) -> None:
        """Leave the bus.  Idempotent."""
        if self._stopping:
            return
        self._stopping = True
        self.interface.flush_now()
        self.interface.detach()
        if self._supervisor is not None:
            self._supervisor.cancel()
        bus = self.bus
        self._drop(bus)
        try:
            await asyncio.wait_for(_disconnected(bus), 2.0)
        except Exception:
            log.debug("disconnect wait ended with an error", exc_info=True)
        if not self._done.done():
            self._done.set_result(None)

    async def wait_disconnected(self) -> None:
        """Return after :meth:`stop`; raise :class:`BusDisconnected` if the connection
        was lost and ``reconnect`` is off (the daemon then exits non-zero)."""
        await asyncio.shield(self._done)

    async def __aenter__(self) -> DBusService:
        return self

    async def __aexit__(
        self,
        exc_type: type[BaseException] | None,
        exc: BaseException | None,
        tb: TracebackType | None,
    ) -> None:
        await self.stop()


def _disconnected(bus: MessageBus) -> asyncio.Future[Any]:
    """Resolves when ``bus`` disconnects.  Shielded: dbus-fast hands out its own
    future, and cancelling a waiter must not cancel it for everybody else."""
    return asyncio.shield(bus.wait_for_disconnect())  # type: ignore[no-untyped-call]


async def connect_bus(bus_address: str | None) -> MessageBus:
    """A connected bus: ``bus_address``, else the system bus (``DBUS_SYSTEM_BUS_ADDRESS``
    or the default socket).  KdumpdError with one line if that fails."""
    bus_kw: dict[str, Any] = (
        {"bus_address": bus_address} if bus_address else {"bus_type": BusType.SYSTEM}
    )
    try:
        return await MessageBus(**bus_kw).connect()
    except (OSError, DBusError, ValueError, EOFError) as err:
        where = bus_address or "system bus"
        raise KdumpdError(f"cannot connect to D-Bus ({where}): {err}") from None


async def serve(
    bus_address: str | None,
    store: StateStore,
    controller: Controller,
    *,
    name: str = BUS_NAME,
    min_interval: float = 0.01,
    uid_lookup: UidLookup | None = None,
    reconnect: bool = True,
    authority: Authority | None = None,
    polkit: bool = True,
) -> DBusService:
    """Connect to the bus (``bus_address``, else the system bus, which honours
    ``DBUS_SYSTEM_BUS_ADDRESS``), export ``/org/kdumpd1`` and own ``name``.

    Raises :class:`KdumpdError` with one line if the bus is unreachable or the name is
    taken or not allowed by policy.  See :class:`DBusService` for what happens when
    the connection is lost later.  Callers other than root are allowed what
    ``authority`` allows (default: polkitd on the same bus; ``polkit=False``: nothing).
    """
    bus = await connect_bus(bus_address)
    service = DBusService(bus, bus_address=bus_address, name=name, reconnect=reconnect)
    if authority is None and polkit:
        authority = PolkitAuthority(lambda: service.bus)
    iface = ManagerInterface(
        store,
        controller,
        uid_lookup or service.lookup_uid,
        min_interval=min_interval,
        authority=authority,
    )
    service.interface = iface
    try:
        await service._own(bus)
    except KdumpdError:
        await service.stop()
        raise
    iface.attach(asyncio.get_running_loop())
    service.start_supervisor()
    log.info("D-Bus service %s on %s", name, bus_address or "the system bus")
    return service


def introspection_xml() -> str:
    """The ``org.kdumpd1.Manager`` interface as introspection XML (what
    ``docs/org.kdumpd1.Manager.xml`` holds)."""
    import xml.etree.ElementTree as ET

    from dbus_fast import introspection as intr

    class _NoController:
        async def reload(self) -> None: ...
        async def rescan(self) -> None: ...
        async def load(self) -> None: ...
        async def unload(self) -> None: ...
        async def report(self) -> dict[str, Any]:
            return {}

    async def _no_uid(_sender: str) -> int:
        return -1

    iface = ManagerInterface(StateStore(), _NoController(), _no_uid)
    node = intr.Node(OBJECT_PATH, interfaces=[iface.introspect()])
    element = node.to_xml()
    ET.indent(element)
    return (
        '<!DOCTYPE node PUBLIC "-//freedesktop//DTD D-BUS Object Introspection 1.0//EN"\n'
        ' "http://www.freedesktop.org/standards/dbus/1.0/introspect.dtd">\n'
        + ET.tostring(element, encoding="unicode")
        + "\n"
    )


if __name__ == "__main__":
    import sys

    sys.stdout.write(introspection_xml())
