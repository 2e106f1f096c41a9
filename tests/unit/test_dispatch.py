"""The dispatcher's scheduling with a scripted model client (no network): slots, retries,
outages and lines that must not vanish."""

import asyncio
from collections.abc import Callable

import orjson

from openbatch_runner.dispatch import Dispatcher
from openbatch_runner.outcome import LineResult
from openbatch_runner.reply import Reply
from openbatch_runner.retry import AttemptKind, RetryPolicy
from openbatch_runner.servers import HealthMonitor, ServerPool
from openbatch_runner.window import Window

Script = Callable[[str, dict[str, object]], Reply]


class ScriptedClient:
    def __init__(self, script: Script) -> None:
        self.script = script
        self.sent: list[tuple[str, str]] = []  # (server, custom id)
        self.in_flight = 0
        self.max_in_flight = 0

    async def post(self, url: str, body: bytes) -> Reply:
        payload = orjson.loads(body)
        self.sent.append((url.split("/v1/", maxsplit=1)[0], payload["id"]))
        self.in_flight += 1
        self.max_in_flight = max(self.max_in_flight, self.in_flight)
        try:
            await asyncio.sleep(0.001)
            return self.script(url, payload)
        finally:
            self.in_flight -= 1

    async def close(self) -> None:
        return None


def ok() -> Reply:
    return Reply(AttemptKind.OK, status=200, body={"ok": True})


def line(i: int) -> bytes:
    body = {"model": "m", "messages": [], "id": f"c{i}"}
    return orjson.dumps({"custom_id": f"c{i}", "method": "POST", "url": "/v1/x", "body": body})


async def run(
    raws: list[bytes],
    client: ScriptedClient,
    *,
    urls: tuple[str, ...] = ("http://a",),
    window: int = 4,
    max_attempts: int = 3,
    max_retry_wait: float = 60.0,
    probe_answer: Callable[[str], str | None] = lambda _u: None,
) -> list[tuple[int, LineResult]]:
    delivered: list[tuple[int, LineResult]] = []

    async def probe(url: str) -> str | None:
        return probe_answer(url)

    monitor = HealthMonitor(
        ServerPool.of(list(urls)),
        probe,
        outage_timeout=30,
        say=lambda _m: None,
        probe_interval=0.01,
    )
    dispatcher = Dispatcher(
        client=client,
        monitor=monitor,
        window=Window(window),
        policy=RetryPolicy(max_attempts=max_attempts, base_delay=0.01, max_delay=0.02),
        max_retry_wait=max_retry_wait,
        deliver=lambda index, result: delivered.append((index, result)),
        observe=lambda _r, _l, _n: None,
        max_live=64,
        say=lambda _m: None,
    )
    batches = [list(enumerate(raws)), []]

    async def read_batch() -> list[tuple[int, bytes]]:
        return batches.pop(0)

    await asyncio.wait_for(dispatcher.run(read_batch), 20)
    await monitor.close()
    return delivered


def error_of(result: LineResult) -> dict[str, object]:
    parsed: dict[str, object] = orjson.loads(result.data)
    return parsed


async def test_a_line_in_backoff_gives_its_slot_to_the_others() -> None:
    seen: set[str] = set()

    def script(_url: str, body: dict[str, object]) -> Reply:
        if body["id"] == "c0" and "c0" not in seen:
            seen.add("c0")
            return Reply(AttemptKind.HTTP_ERROR, status=429, body={"error": {}}, retry_after=0.2)
        return ok()

    client = ScriptedClient(script)
    delivered = await run([line(i) for i in range(20)], client, window=1)
    assert [index for index, _ in delivered][-1] == 0  # the other 19 ran meanwhile
    assert all(result.ok for _, result in delivered)
    assert client.max_in_flight == 1


async def test_an_outage_costs_no_attempt() -> None:
    down = {"on": True}

    def script(_url: str, _body: dict[str, object]) -> Reply:
        if down["on"]:
            return Reply(AttemptKind.CONNECTION, detail="refused")
        return ok()

    probes = []

    def probe(_url: str) -> str | None:
        probes.append(1)
        if len(probes) == 1:
            return "refused"  # confirms the outage ...
        down["on"] = False  # ... and the next probe finds the server back
        return None

    client = ScriptedClient(script)
    delivered = await run([line(i) for i in range(10)], client, max_attempts=1, probe_answer=probe)
    assert len(delivered) == 10 and all(result.ok for _, result in delivered)


async def test_a_retry_goes_to_the_other_server() -> None:
    def script(url: str, _body: dict[str, object]) -> Reply:
        if url.startswith("http://dead"):
            return Reply(AttemptKind.CONNECTION, detail="refused")
        return ok()

    client = ScriptedClient(script)
    delivered = await run(
        [line(i) for i in range(50)],
        client,
        urls=("http://dead", "http://live"),
        max_attempts=2,
        probe_answer=lambda url: "refused" if "dead" in url else None,
    )
    assert len(delivered) == 50 and all(result.ok for _, result in delivered)
    # Ejected after three lines: the dead server saw only the first few requests.
    assert sum(1 for server, _ in client.sent if server == "http://dead") <= 8


async def test_a_lines_total_wait_is_bounded() -> None:
    def script(_url: str, _body: dict[str, object]) -> Reply:
        return Reply(AttemptKind.HTTP_ERROR, status=429, body={"error": {}}, retry_after=0.1)

    client = ScriptedClient(script)
    delivered = await run([line(0)], client, max_attempts=100, max_retry_wait=0.25)
    assert len(client.sent) == 3  # two waits of 0.1 s fit in 0.25 s, a third does not
    ((_, result),) = delivered
    assert not result.ok and error_of(result)["response"]["status_code"] == 429  # type: ignore[index]


async def test_no_line_vanishes() -> None:
    def script(_url: str, body: dict[str, object]) -> Reply:
        if body["id"] == "c1":
            raise RuntimeError("a bug in the client")
        return ok()

    raws = [line(0), line(1), b'{"custom_id": "c2", "no body": 1}', b"\xff not json"]
    delivered = await run(raws, ScriptedClient(script))
    by_index = dict(delivered)
    assert sorted(by_index) == [0, 1, 2, 3]
    assert by_index[0].ok
    for index, custom_id in ((1, "c1"), (2, "c2"), (3, "line-4")):
        result = error_of(by_index[index])
        assert result["custom_id"] == custom_id
        assert result["error"]["code"] == "runner_error"  # type: ignore[index]
