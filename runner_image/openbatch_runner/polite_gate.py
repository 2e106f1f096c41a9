"""`--polite` at run time: one controller per model server, fed every scrape interval.

The decisions are `polite.PoliteController`'s; this is the thin edge around them. Each
server gets a loop that reads its metrics page (`scrape`), hands the controller a `Tick`
with the server's load, the batch's own latencies to that server and the shard's standing
against the deadline, and applies the answer. The dispatcher asks `room` before sending a
request to a server (`dispatch.ServerGate`), so each server is gated on its own load; the
shared `Window` holds the sum of the windows of the servers that are up, capped at the
shard's ceiling, so the batch never has more than `maxInFlight` in flight.
"""

import asyncio
import contextlib
from collections.abc import Awaitable, Callable
from dataclasses import dataclass, field
from datetime import UTC, datetime
from urllib.parse import urlsplit

from openbatch.runner_args import ServerKind
from openbatch_runner.polite import DeadlineInfo, PoliteController, RateMeter, ScrapeError, Tick
from openbatch_runner.prometheus import (
    KINDS,
    Load,
    MetricsTextError,
    detect_kind,
    parse_metrics,
    read_load,
)
from openbatch_runner.reply import Reply, is_overload
from openbatch_runner.retry import AttemptKind
from openbatch_runner.scrape import ScrapeFailed, fetch_metrics
from openbatch_runner.servers import Health, Server, ServerPool
from openbatch_runner.window import Window

# GET a metrics page: (url, timeout, bearer key) -> its text, or `ScrapeFailed`.
Fetch = Callable[[str, float, str | None], Awaitable[str]]


@dataclass(frozen=True)
class PoliteSettings:
    metrics_url: str  # a path next to each server's /v1, or one full URL
    kind: ServerKind = ServerKind.AUTO
    queue_threshold: float | None = None  # None: the kind's default (`prometheus.KINDS`)
    interval: float = 1.0


def metrics_url_for(base_url: str, location: str) -> str:
    """Where a server's metrics are: a path goes next to its `/v1` (`http://h:8000/v1` and
    `/metrics` give `http://h:8000/metrics`); a full URL is taken as it is."""
    if not location.startswith("/"):
        return location
    root = base_url.rstrip("/")
    if root.endswith("/v1"):
        root = root[: -len("/v1")]
    return root + location


def _worth_saying(floor: int, said: int) -> bool:
    """Whether a deadline floor is news: pressure starts or ends, or the floor moved by half
    of what was last said (it is worked out again every tick and would fill the log)."""
    if floor == said:
        return False
    if not floor or not said:
        return True
    return 2 * abs(floor - said) >= said


def _origin(url: str) -> tuple[str, str, int | None]:
    parts = urlsplit(url)
    return parts.scheme, (parts.hostname or "").lower(), parts.port


@dataclass
class _Slot:
    """One server's controller and what happened to it since the last tick."""

    server: Server
    controller: PoliteController
    metrics_url: str
    send_key: bool  # the metrics page is on the server's own origin: its key may go there
    in_flight: int = 0
    latencies: list[float] = field(default_factory=list)
    overloads: int = 0
    kind: ServerKind | None = None
    label: str = ""  # what the window follows, as reported ("vllm", "latency")
    floor: int = 0  # the deadline's floor last reported (0: no pressure reported)


class PoliteGate:
    def __init__(
        self,
        *,
        pool: ServerPool,
        window: Window,
        max_total: int,
        settings: PoliteSettings,
        api_key: str | None,
        progress: Callable[[], tuple[int, int]],  # (lines left, lines done) of the shard
        deadline: datetime | None,
        say: Callable[[str], None],
        fetch: Fetch = fetch_metrics,
        shares: int = 1,  # shards of this batch, each gated on the same servers
    ) -> None:
        self._pool = pool
        self._window = window
        self._max_total = max(1, max_total)
        self._settings = settings
        self._api_key = api_key
        self._progress = progress
        self._deadline = deadline
        self._say = say
        self._fetch = fetch
        self._meter = RateMeter()
        self._total: float | None = None  # seconds to the deadline at the first look
        self._slots: dict[int, _Slot] = {}
        for server in pool.servers:
            url = metrics_url_for(server.base_url, settings.metrics_url)
            controller = PoliteController(max_limit=self._max_total, shares=shares)
            self._slots[id(server)] = _Slot(
                server,
                controller,
                url,
                send_key=_origin(url) == _origin(server.base_url),
            )
        self._sync()

    # ------------------------------------------------------------ dispatch.ServerGate
    def room(self, server: Server) -> int:
        slot = self._slots[id(server)]
        return slot.controller.window - slot.in_flight

    def taken(self, server: Server) -> None:
        self._slots[id(server)].in_flight += 1

    def returned(self, server: Server, reply: Reply | None, latency: float) -> None:
        slot = self._slots[id(server)]
        slot.in_flight -= 1
        if reply is None:
            return
        if reply.kind is AttemptKind.OK:
            slot.latencies.append(latency)
        elif is_overload(reply):
            slot.overloads += 1

    # ------------------------------------------------------------ what progress shows
    @property
    def total_window(self) -> int:
        return self._window.limit

    @property
    def signal(self) -> str:
        """What the windows follow, per server in order, e.g. `vllm` or `vllm,latency`."""
        return ",".join(slot.label or "starting" for slot in self._slots.values())

    @property
    def pressure(self) -> bool:
        return any(slot.controller.pressure for slot in self._slots.values())

    # ------------------------------------------------------------ the loops
    async def run(self) -> None:
        """Watch every server until cancelled."""
        tasks = [asyncio.create_task(self._watch(slot)) for slot in self._slots.values()]
        try:
            await asyncio.gather(*tasks)
        finally:
            for task in tasks:
                task.cancel()
            with contextlib.suppress(asyncio.CancelledError):
                await asyncio.gather(*tasks, return_exceptions=True)

    async def _watch(self, slot: _Slot) -> None:
        loop = asyncio.get_running_loop()
        interval = self._settings.interval
        while True:
            # The batch's requests as the server's counts will see them: taken before the
            # scrape, which may take a while (window changes meanwhile are not in them).
            in_flight = slot.in_flight
            load, threshold = await self._read(slot)
            now = loop.time()
            tick = Tick(
                now=now,
                in_flight=in_flight,
                load=load,
                queue_threshold=threshold,
                latencies=tuple(slot.latencies),
                overloads=slot.overloads,
                deadline=self._standing(now),
            )
            slot.latencies.clear()
            slot.overloads = 0
            slot.controller.observe(tick)
            self._report(slot, load)
            self._sync()
            await asyncio.sleep(interval)

    async def _read(self, slot: _Slot) -> tuple[Load | ScrapeError | None, float]:
        settings = self._settings
        if settings.kind is ServerKind.LATENCY:
            return None, 0.0
        key = self._api_key if slot.send_key else None
        try:
            text = await self._fetch(slot.metrics_url, max(1.0, settings.interval), key)
            metrics = parse_metrics(text)
        except (ScrapeFailed, MetricsTextError) as exc:
            return ScrapeError(str(exc)), 0.0
        kind = settings.kind if settings.kind is not ServerKind.AUTO else slot.kind
        if kind is None:
            kind = detect_kind(metrics)
        load = read_load(kind, metrics) if kind is not None else None
        if kind is None or load is None:
            names = ", ".join(n for k in KINDS.values() for n in k.waiting)
            return ScrapeError(f"{slot.metrics_url} shows none of {names}"), 0.0
        slot.kind = kind
        threshold = settings.queue_threshold
        return load, KINDS[kind].queue_threshold if threshold is None else threshold

    def _standing(self, now: float) -> DeadlineInfo | None:
        remaining, done = self._progress()
        self._meter.add(now, done)
        if self._deadline is None:
            return None
        left = (self._deadline - datetime.now(UTC)).total_seconds()
        if self._total is None:
            self._total = max(0.0, left)
        servers = sum(1 for slot in self._slots.values() if slot.server.health is Health.UP)
        return DeadlineInfo(
            remaining=remaining,
            seconds_left=left,
            servers=max(1, servers),
            seconds_total=self._total,
        )

    def _report(self, slot: _Slot, load: Load | ScrapeError | None) -> None:
        """Log what changed: the signal a window follows, and deadline pressure."""
        controller = slot.controller
        url = slot.server.base_url
        label = controller.signal.value
        if label == "metrics" and slot.kind is not None:
            label = slot.kind.value
        if label != slot.label:
            if label == "latency":
                why = load.reason if isinstance(load, ScrapeError) else "--polite-server-kind"
                self._say(
                    f"polite: {url}: no load metrics ({why}); its window follows the batch's "
                    f"latency against its idle baseline"
                )
            else:
                self._say(f"polite: {url}: its window follows its {label} metrics")
            slot.label = label
        floor = controller.floor if controller.pressure else 0
        if not _worth_saying(floor, slot.floor):
            return
        standing = self._standing_text()
        if floor > slot.floor:
            self._say(
                f"deadline pressure: {standing}; {url}'s window may no longer go below "
                f"{floor} (ceiling {controller.max_limit})"
            )
        elif floor:
            self._say(f"deadline pressure easing: {standing}; {url}'s floor {floor}")
        else:
            self._say(f"deadline pressure over: {standing}; {url}'s window is polite again")
        slot.floor = floor

    def _standing_text(self) -> str:
        remaining, _ = self._progress()
        rate = self._meter.rate() or 0.0
        left = (self._deadline - datetime.now(UTC)).total_seconds() if self._deadline else 0.0
        eta = f"{remaining / rate:.0f}s" if rate > 0 else "never"
        return f"{remaining} lines left at {rate:.1f}/s take {eta}, {max(0.0, left):.0f}s remain"

    def _sync(self) -> None:
        """The shared window: the sum over the servers that are up, within the ceiling."""
        slots = list(self._slots.values())
        up = [s for s in slots if s.server.health is Health.UP] or slots
        total = sum(s.controller.window for s in up)
        self._window.set_limit(min(self._max_total, max(1, total)))
