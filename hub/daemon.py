"""The hub process: sideband server, per-spoke sessions, the router, status socket.

Theory of operation
-------------------
:class:`HubDaemon` opens the hub's key store, imports each configured spoke's
bootstrap secret (once; the store remembers it), and serves the sideband with
:func:`qkdnet.sideband.serve_sideband`. The sideband authenticates each caller with
the keys of the name its HELLO claims, so a connection *is* that spoke.

Per connection a :class:`_Session` runs three things: the sideband receive loop
(``SidebandChannel.run`` with a :class:`~qkdnet.sideband.FrameRouter`: hub types go
to the :class:`~qkdnet.hub.router.HubRouter`, link types to the link receiver when
one is attached), and a writer task that drains the session's outbound queue so a
slow spoke never blocks the router or the other spokes. The router's actions are
executed by :meth:`HubDaemon._execute`: ``Send`` goes to the destination's queue,
``Disconnect`` aborts that spoke's connection with an ERROR frame. A ticker polls
the router while frames wait for key.

Status goes to a Unix socket (mode 0600) that answers one JSON document per
connection; ``qkdnet hub status`` reads it. SIGINT/SIGTERM cancel everything; the
key store is closed (durable by construction), so a restarted hub keeps its pools
and the spokes, which reconnect with backoff, carry on.
"""

from __future__ import annotations

import contextlib
import json
import logging
import math
import os
import secrets
import signal
import time
from collections.abc import AsyncIterator, Callable
from dataclasses import dataclass, field
from functools import partial
from pathlib import Path
from typing import Any

import trio
from scapy.packet import Packet

from qkdnet.auth import FrameAuthenticator, KeyStoreTagKeys
from qkdnet.errors import ConfigError, ErrorCode, QkdnetError, RemoteProtocolError
from qkdnet.hub import wire as w
from qkdnet.hub.router import Disconnect, HubRouter, Send
from qkdnet.keystore import KeyStore, prune_retired_periodically
from qkdnet.sideband import FrameReceived, FrameRouter, SidebandChannel, serve_sideband
from qkdnet.wire import Role

log = logging.getLogger(__name__)

#: Outbound frames a session may have queued before the hub drops the spoke.
MAX_OUTBOUND = 4096
HUB_TYPES = range(0x40, 0x60)
LINK_TYPES = range(0x10, 0x40)

#: Hook that runs the link layer on one spoke's connection (the hub is the receiver).
#: Started as ``await nursery.start(link_runner, daemon, spoke, channel, frame_router)``
#: inside the session: it registers the link types on ``frame_router``, calls
#: ``task_status.started()``, then runs until cancelled.  If it has a ``resources()``
#: method (an async context manager, e.g. the PHY worker processes of
#: :class:`qkdnet.hub.linkrun.HubLinkRunner`), the hub holds it open while it serves.
LinkRunner = Callable[["HubDaemon", str, SidebandChannel, FrameRouter], Any]


@dataclass
class HubSettings:
    """Everything the hub needs (built from a config file or by embedded_network)."""

    name: str
    keystore: Path
    host: str = "127.0.0.1"
    port: int = 7787
    #: spoke name -> bootstrap secret file (None: already imported into the store)
    spokes: dict[str, Path | None] = field(default_factory=dict)
    control_socket: Path | None = None
    key_wait: float = 5.0
    #: Seconds without new key on hop hub->spoke before a frame waiting for it fails
    #: (``[routing] key_stall``; None: ``key_wait``).
    key_stall: float | None = 60.0
    queue_frames: int = 64
    queue_bytes: int = 2 << 20
    window: int = 64
    pcap: Path | None = None
    link: dict[str, Any] = field(default_factory=dict)
    #: Key-store lease per pool: bigger is faster for big messages, and burns up to
    #: this many bits per pool when the process stops (see qkdnet.keystore).
    lease_bits: int = 1 << 16
    #: Used-up block records kept per pool (``[keystore] retired_keep``).
    retired_keep: int = 100_000


@dataclass
class _Session:
    spoke: str
    chan: SidebandChannel
    send_q: trio.MemorySendChannel[Packet | None]
    recv_q: trio.MemoryReceiveChannel[Packet | None]
    cancel: trio.CancelScope = field(default_factory=trio.CancelScope)
    queued: int = 0
    connected_at: float = 0.0
    abort: tuple[ErrorCode, str] | None = None
    closed: bool = False


class HubDaemon:
    """A running hub (see the module docstring). Use :meth:`run` inside a nursery."""

    def __init__(self, settings: HubSettings, *, store: KeyStore | None = None,
                 link_runner: LinkRunner | None = None) -> None:
        self.settings = settings
        self.store = store
        self._own_store = store is None
        self.link_runner = link_runner
        self.router: HubRouter | None = None
        self.sessions: dict[str, _Session] = {}
        self.listeners: list[trio.SocketListener] = []
        self.started_at = time.time()
        self.link_stats: dict[str, dict[str, Any]] = {}
        self.counters: dict[str, int] = {"connections": 0, "refused": 0}
        self._wake = trio.Event()

    @property
    def port(self) -> int:
        """The TCP port the hub listens on."""
        return int(self.listeners[0].socket.getsockname()[1])

    # -- lifecycle ----------------------------------------------------------------

    def _open(self) -> KeyStore:
        if self.store is None:
            self.store = KeyStore(self.settings.keystore,
                                  lease_bits=self.settings.lease_bits)
        for spoke, secret_file in self.settings.spokes.items():
            if secret_file is not None:
                try:
                    secret = Path(secret_file).read_bytes()
                except OSError as err:
                    raise ConfigError(f"cannot read bootstrap secret: {err.strerror}",
                                      source=str(secret_file), key=f"spokes.{spoke}") from None
                self.store.import_bootstrap(spoke, secret, initiator=False)
        self.router = HubRouter(
            self.settings.name, self.store, key_wait=self.settings.key_wait,
            key_stall=self.settings.key_stall,
            queue_frames=self.settings.queue_frames, queue_bytes=self.settings.queue_bytes,
            window=self.settings.window, relay_id_base=secrets.randbits(32))
        return self.store

    def _auth_for(self, name: str) -> FrameAuthenticator | None:
        assert self.store is not None
        if name not in self.settings.spokes:
            self.counters["refused"] += 1
            log.warning("hub %s refuses %r: not a spoke in its config ([spokes.%s])",
                        self.settings.name, name, name)
            return None
        if not self.store.has_bootstrap(name):
            self.counters["refused"] += 1
            log.warning("hub %s refuses %r: no bootstrap secret imported for it",
                        self.settings.name, name)
            return None
        return FrameAuthenticator(KeyStoreTagKeys(self.store, name))

    async def run(self, *, task_status: trio.TaskStatus[HubDaemon]
                  = trio.TASK_STATUS_IGNORED) -> None:
        """Serve until cancelled; ``task_status.started(self)`` once listening."""
        store = self._open()
        # What the links share for the hub's lifetime (e.g. PHY worker processes).
        shared = getattr(self.link_runner, "resources", None)
        try:
            async with (shared() if shared is not None else _nothing()), \
                    trio.open_nursery() as nursery:
                self.listeners = await nursery.start(_serve_partial(self))
                if self.settings.control_socket is not None:
                    await nursery.start(serve_control_socket, self.settings.control_socket,
                                        self.status)
                nursery.start_soon(self._ticker)
                nursery.start_soon(partial(prune_retired_periodically, store,
                                           keep=self.settings.retired_keep))
                log.info("hub %s listening on port %d", self.settings.name, self.port)
                task_status.started(self)
        finally:
            if self._own_store:
                store.close()

    async def _ticker(self) -> None:
        """Poll the router while frames wait for key or for a slow spoke."""
        assert self.router is not None
        while True:
            if self.router.blocked():
                await trio.sleep(0.005)
                self._execute(self.router.poll(trio.current_time()))
            else:
                self._wake = trio.Event()
                with trio.move_on_after(0.5):
                    await self._wake.wait()

    # -- per connection -----------------------------------------------------------

    async def _handle(self, chan: SidebandChannel) -> None:
        assert self.router is not None
        spoke = chan.peer_name
        if spoke is None:  # the handshake guarantees a name; be defensive
            return
        send_q, recv_q = trio.open_memory_channel[Packet | None](math.inf)
        sess = _Session(spoke, chan, send_q, recv_q, connected_at=time.time())
        old = self.sessions.get(spoke)
        if old is not None:  # a reconnect: the old connection is dead or a duplicate
            old.cancel.cancel()
        self.sessions[spoke] = sess
        self.counters["connections"] += 1
        self._execute(self.router.connect(spoke, trio.current_time()))
        frames = FrameRouter()

        def on_hub_frame(_chan: SidebandChannel, ev: FrameReceived) -> None:
            # Never yields. The key this frame takes is committed with the rest of its
            # read (one commit per read, see FrameRouter.register_sync); what the
            # router made of it (a forwarded frame, an ack) is queued for the writers
            # only once that commit has succeeded.
            assert self.router is not None and self.store is not None
            actions = self.router.receive(spoke, ev.body, trio.current_time())
            self.store.after_commit(partial(self._release, actions),
                                    if_dropped=partial(self._unsend, actions))

        frames.register_sync(HUB_TYPES, on_hub_frame)
        try:
            with sess.cancel:
                async with trio.open_nursery() as nursery:
                    nursery.start_soon(self._writer, sess)
                    if self.link_runner is not None:  # registers link types first
                        await nursery.start(self.link_runner, self, spoke, chan, frames)
                    await chan.run(frames)
                    nursery.cancel_scope.cancel()
        except* (QkdnetError, trio.BrokenResourceError, trio.ClosedResourceError,
                 trio.EndOfChannel) as group:
            # One spoke's connection failing must never take the hub down.
            log.info("hub %s: connection of %s ended: %s", self.settings.name, spoke,
                     "; ".join(str(e) for e in group.exceptions))
        except* Exception as group:  # a bug: log it, keep serving the other spokes
            log.error("hub %s: internal error on %s's connection: %r", self.settings.name,
                      spoke, group.exceptions)
        finally:
            sess.closed = True
            if self.sessions.get(spoke) is sess:
                del self.sessions[spoke]
                self._execute(self.router.disconnect(spoke, trio.current_time()))
            if sess.abort is not None:
                code, reason = sess.abort
                with trio.CancelScope(shield=True):
                    await chan.abort(RemoteProtocolError(reason, code))

    async def _writer(self, sess: _Session) -> None:
        assert self.router is not None
        async for body in sess.recv_q:
            sess.queued -= 1
            if body is None:  # _drop: everything queued before the verdict is out
                sess.cancel.cancel()
                return
            try:
                await sess.chan.send(body)
            except (QkdnetError, trio.BrokenResourceError, trio.ClosedResourceError):
                sess.cancel.cancel()  # the connection is closing or gone
                return
            if isinstance(body, w.HubData | w.HubKeyRelay):
                self.router.sent(sess.spoke)
                if self.router.blocked():
                    self._execute(self.router.poll(trio.current_time()))

    def _release(self, actions: list[Send | Disconnect]) -> None:
        self._execute(actions)
        self._wake.set()

    def _unsend(self, actions: list[Send | Disconnect]) -> None:
        """Router output whose commit failed never reaches a writer: take it off the
        destinations' in-flight counts, so flow control does not wait for it."""
        assert self.router is not None
        for act in actions:
            if isinstance(act, Send) and isinstance(act.body, w.HubData | w.HubKeyRelay):
                self.router.sent(act.to)

    def _execute(self, actions: list[Send | Disconnect]) -> None:
        for act in actions:
            if isinstance(act, Send):
                sess = self.sessions.get(act.to)
                if sess is None or sess.closed:
                    continue
                if sess.abort is not None:
                    continue
                if sess.queued >= MAX_OUTBOUND:
                    self._drop(sess, ErrorCode.THROTTLED,
                               f"{sess.spoke} does not read its frames")
                    continue
                sess.queued += 1
                sess.send_q.send_nowait(act.body)
            else:
                sess = self.sessions.get(act.spoke)
                if sess is not None:
                    log.warning("hub %s drops %s: %s", self.settings.name, act.spoke,
                                act.reason)
                    self._drop(sess, act.code, act.reason)

    def _drop(self, sess: _Session, code: ErrorCode, reason: str) -> None:
        """Close a spoke's connection with ERROR after what is queued for it (<= 1 s)."""
        if sess.abort is None:
            sess.abort = (code, reason)
            sess.send_q.send_nowait(None)  # the writer stops here and cancels
            sess.cancel.deadline = min(sess.cancel.deadline, trio.current_time() + 1.0)

    # -- status -------------------------------------------------------------------

    def status(self) -> dict[str, Any]:
        """Links, key per direction, frames relayed, drops and why (no key material)."""
        assert self.router is not None
        st = self.router.status()
        for name, entry in st["spokes"].items():
            entry["link"] = self.link_stats.get(name, {})
            sess = self.sessions.get(name)
            entry["outbound_queued"] = sess.queued if sess else 0
        offline = [n for n in self.settings.spokes if n not in st["spokes"]]
        for name in offline:
            st["spokes"][name] = {"name": name, "connected": False,
                                  "link": self.link_stats.get(name, {}),
                                  "key_bits": _key_bits(self.store, name)}
        st["uptime_s"] = round(time.time() - self.started_at, 3)
        st["port"] = self.port if self.listeners else None
        st["connections"] = dict(self.counters)
        return st


@contextlib.asynccontextmanager
async def _nothing() -> AsyncIterator[None]:
    yield


def _key_bits(store: KeyStore | None, spoke: str) -> dict[str, int]:
    if store is None:
        return {}
    return {"hub_to_spoke": store.available(spoke, "data-tx"),
            "spoke_to_hub": store.available(spoke, "data-rx"),
            "auth_hub_to_spoke": store.available(spoke, "auth-tx"),
            "auth_spoke_to_hub": store.available(spoke, "auth-rx")}


def _serve_partial(daemon: HubDaemon) -> Any:
    async def serve(task_status: trio.TaskStatus[list[trio.SocketListener]]
                    = trio.TASK_STATUS_IGNORED) -> None:
        pcap = None
        if daemon.settings.pcap is not None:
            from qkdnet.pcap import PcapRecorder
            pcap = PcapRecorder(daemon.settings.pcap)
        try:
            await serve_sideband(daemon._handle, daemon.settings.port,
                                 local_name=daemon.settings.name,
                                 auth_for_peer=daemon._auth_for, host=daemon.settings.host,
                                 role=Role.HUB, pcap=pcap, task_status=task_status)
        finally:
            if pcap is not None:
                pcap.close()
    return serve


# -- local control socket (shared with the spoke daemon) ----------------------------

async def serve_control_socket(path: Path, status: Callable[[], dict[str, Any]], *,
                               task_status: trio.TaskStatus[None]
                               = trio.TASK_STATUS_IGNORED) -> None:
    """Answer every connection on Unix socket ``path`` with ``status()`` as JSON."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    with contextlib.suppress(FileNotFoundError):
        path.unlink()
    sock = trio.socket.socket(trio.socket.AF_UNIX, trio.socket.SOCK_STREAM)
    old_umask = os.umask(0o177)  # only the owner may connect
    try:
        await sock.bind(str(path))
    finally:
        os.umask(old_umask)
    sock.listen(16)
    listener = trio.SocketListener(sock)

    async def answer(stream: trio.abc.Stream) -> None:
        try:
            data = json.dumps(status(), sort_keys=True, default=str).encode()
            await stream.send_all(data)
        except (trio.BrokenResourceError, trio.ClosedResourceError):
            pass
        finally:
            await stream.aclose()

    try:
        async with trio.open_nursery() as nursery:
            nursery.start_soon(trio.serve_listeners, answer, [listener])
            task_status.started()
    finally:
        with contextlib.suppress(OSError):
            path.unlink()


async def read_control_socket(path: Path, timeout: float = 5.0) -> dict[str, Any]:
    """Read one status document from a daemon's control socket."""
    with trio.fail_after(timeout):
        stream = await trio.open_unix_socket(str(path))
        chunks = []
        async with stream:
            while data := await stream.receive_some(65536):
                chunks.append(data)
    result: dict[str, Any] = json.loads(b"".join(chunks))
    return result


@contextlib.asynccontextmanager
async def open_hub(settings: HubSettings, *, store: KeyStore | None = None,
                   link_runner: LinkRunner | None = None) -> AsyncIterator[HubDaemon]:
    """Run a hub for the duration of the block (tests, embedded networks)."""
    daemon = HubDaemon(settings, store=store, link_runner=link_runner)
    async with trio.open_nursery() as nursery:
        await nursery.start(daemon.run)
        try:
            yield daemon
        finally:
            nursery.cancel_scope.cancel()


async def run_until_signal(main: Callable[[trio.TaskStatus[Any]], Any]) -> None:
    """Run ``main`` until SIGINT or SIGTERM, then cancel it cleanly."""
    with trio.open_signal_receiver(signal.SIGINT, signal.SIGTERM) as signals:
        async with trio.open_nursery() as nursery:
            await nursery.start(main)

            async def watch() -> None:
                async for signum in signals:
                    log.info("signal %d: shutting down", signum)
                    nursery.cancel_scope.cancel()
                    return

            nursery.start_soon(watch)
