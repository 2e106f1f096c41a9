"""openbatch.storage against local files and a real S3 server (SeaweedFS), outages included."""

from __future__ import annotations

import hashlib
import io
import os
import random
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from openbatch.settings import S3Settings
from openbatch.storage import (
    MIN_PART_SIZE,
    PART_SIZE,
    LocalStore,
    ObjectNotFound,
    ObjectStore,
    S3ObjectReader,
    S3Store,
    StorageError,
    join_key,
    open_uri,
    split_uri,
)
from openbatch.storage.local import _HOST
from tests.fixtures.s3 import SeaweedServer, unique_bucket_name

MiB = 1 << 20


@dataclass
class Target:
    kind: str
    store: ObjectStore
    prefix: str

    def key(self, name: str) -> str:
        return f"{self.prefix}{name}"


@pytest.fixture(params=["local", "s3"])
def target(request: pytest.FixtureRequest, tmp_path: Path) -> Target:
    if request.param == "local":
        return Target("local", LocalStore(), f"{tmp_path}/")
    bucket: str = request.getfixturevalue("s3_bucket")
    settings: S3Settings = request.getfixturevalue("s3_settings")
    return Target("s3", S3Store(bucket, settings), "")


class ChunkReader:
    """A generator-backed, non-rewindable reader: deterministic 1 MiB chunks."""

    def __init__(self, total: int, chunk: int = MiB, seed: int = 7) -> None:
        self._chunks = self._generate(total, chunk, seed)
        self._pending = b""
        self.digest = hashlib.sha256()
        self.requests: list[int] = []

    @staticmethod
    def _generate(total: int, chunk: int, seed: int) -> Iterator[bytes]:
        rng = random.Random(seed)
        sent = 0
        while sent < total:
            size = min(chunk, total - sent)
            sent += size
            yield rng.randbytes(size)

    def read(self, size: int = -1, /) -> bytes:
        self.requests.append(size)
        if not self._pending:
            self._pending = next(self._chunks, b"")
        out, self._pending = self._pending[:size], self._pending[size:]
        self.digest.update(out)
        return out


def _sha256_stream(store: ObjectStore, key: str) -> tuple[str, int]:
    digest = hashlib.sha256()
    size = 0
    with store.open_read(key) as reader:
        while chunk := reader.read(MiB):
            digest.update(chunk)
            size += len(chunk)
    return digest.hexdigest(), size


def _closed_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


# --------------------------------------------------------------------------- both stores


def test_put_read_stat_exists_delete(target: Target) -> None:
    store, key = target.store, target.key("a/b/obj.jsonl")
    assert store.stat(key) is None
    assert not store.exists(key)

    store.put_bytes(key, b"hello\nworld\n")
    info = store.stat(key)
    assert info is not None
    assert info.size == 12
    assert info.etag
    assert store.exists(key)
    assert store.read_bytes(key) == b"hello\nworld\n"

    store.put_bytes(key, b"v2")
    info2 = store.stat(key)
    assert info2 is not None
    assert info2.size == 2
    assert info2.etag != info.etag
    assert store.read_bytes(key) == b"v2"

    store.delete(key)
    assert not store.exists(key)
    store.delete(key)  # missing is fine

    empty = target.key("empty")
    store.put_bytes(empty, b"")
    assert store.read_bytes(empty) == b""
    empty_info = store.stat(empty)
    assert empty_info is not None
    assert empty_info.size == 0


def test_describe(target: Target) -> None:
    key = target.key("x/y")
    if target.kind == "s3":
        assert isinstance(target.store, S3Store)
        assert target.store.describe(key) == f"s3://{target.store.bucket}/x/y"
    else:
        assert target.store.describe(key) == key


def test_list_keys(target: Target) -> None:
    store = target.store
    names = [
        "w/shard-1/out-00000002.jsonl",
        "w/shard-1/out-00000001.jsonl",
        "w/shard-1/err-00000001.jsonl",
        "w/shard-1/sub/deep.json",
        "w/shard-10/out-00000001.jsonl",
        "w/cancel",
        "other/x",
    ]
    for name in names:
        store.put_bytes(target.key(name), name.encode())

    def listed(prefix: str) -> list[str]:
        keys = store.list_keys(target.key(prefix))
        assert keys == sorted(keys)
        return [k.removeprefix(target.prefix) for k in keys]

    assert listed("w/shard-1/") == [
        "w/shard-1/err-00000001.jsonl",
        "w/shard-1/out-00000001.jsonl",
        "w/shard-1/out-00000002.jsonl",
        "w/shard-1/sub/deep.json",
    ]
    assert listed("w/shard-1/out-") == [
        "w/shard-1/out-00000001.jsonl",
        "w/shard-1/out-00000002.jsonl",
    ]
    # A prefix is a string prefix, not a directory: shard-1 also matches shard-10.
    assert listed("w/shard-1") == sorted(n for n in names if n.startswith("w/shard-1"))
    assert listed("w/") == sorted(n for n in names if n.startswith("w/"))
    assert listed("nothing/") == []
    assert listed("w/nothing") == []


def test_open_read_offsets(target: Target) -> None:
    store, key = target.store, target.key("data.bin")
    data = bytes(range(256)) * 40  # 10,240 bytes
    store.put_bytes(key, data)
    with store.open_read(key) as reader:
        assert reader.read(10) == data[:10]
        assert reader.read(0) == b""
        assert reader.read() == data[10:]
        assert reader.read(5) == b""
    with store.open_read(key, offset=5000) as reader:
        assert reader.read() == data[5000:]
    with store.open_read(key, offset=len(data) - 1) as reader:
        assert reader.read(100) == data[-1:]
        assert reader.read(100) == b""
    # At or past the end: an empty read, like a file.
    for offset in (len(data), len(data) + 100):
        with store.open_read(key, offset=offset) as reader:
            assert reader.read() == b""
    with pytest.raises(ValueError, match="negative"):
        store.open_read(key, offset=-1)


def test_missing_object(target: Target) -> None:
    store, key = target.store, target.key("no/such/object")
    with pytest.raises(ObjectNotFound) as info:
        store.open_read(key)
    assert not info.value.transient
    assert store.describe(key) in str(info.value)
    with pytest.raises(ObjectNotFound):
        store.read_bytes(key)
    assert store.stat(key) is None
    assert store.list_keys(target.key("no/")) == []


def test_put_stream_20mib(target: Target) -> None:
    """A generator-backed reader is streamed in bounded requests and arrives intact."""
    total = 20 * MiB + 12345
    reader = ChunkReader(total)
    key = target.key("big/stream.bin")
    assert target.store.put_stream(key, reader) == total

    # Never "read everything": every request is bounded by one part.
    assert reader.requests
    assert all(0 < n <= PART_SIZE for n in reader.requests)
    digest, size = _sha256_stream(target.store, key)
    assert size == total
    assert digest == reader.digest.hexdigest()
    info = target.store.stat(key)
    assert info is not None
    assert info.size == total
    if target.kind == "s3":
        # A multipart ETag ends in -<parts>: proof of a streamed upload, not one buffered PUT.
        assert info.etag is not None
        assert info.etag.endswith("-3")


def test_put_stream_small_and_empty(target: Target) -> None:
    store = target.store
    assert store.put_stream(target.key("s"), io.BytesIO(b"abc")) == 3
    assert store.read_bytes(target.key("s")) == b"abc"
    assert store.put_stream(target.key("e"), io.BytesIO(b"")) == 0
    assert store.read_bytes(target.key("e")) == b""


class _Boom(Exception):
    pass


class FailingReader:
    def __init__(self, after: int) -> None:
        self._left = after

    def read(self, size: int = -1, /) -> bytes:
        if self._left <= 0:
            raise _Boom("source broke")
        n = min(size, self._left, MiB)
        self._left -= n
        return b"x" * n


def test_put_stream_reader_error_propagates_and_writes_nothing(target: Target) -> None:
    store, key = target.store, target.key("failing/obj")
    store.put_bytes(key, b"old")
    # Past the first part on S3, so a multipart upload is under way when the source breaks.
    with pytest.raises(_Boom):
        store.put_stream(key, FailingReader(after=PART_SIZE + MiB))
    assert store.read_bytes(key) == b"old"
    assert store.list_keys(target.key("failing/")) == [key]
    if target.kind == "local":
        assert sorted(p.name for p in Path(key).parent.iterdir()) == ["obj"]
    else:
        # The multipart upload under way was aborted, not left to hold its parts.
        assert isinstance(store, S3Store)
        pending = store._client._list_multipart_uploads(store.bucket, prefix=key)
        assert pending.uploads == []


def test_put_bytes_is_atomic_for_concurrent_readers(target: Target) -> None:
    """A reader sees the old or the new content, never a mix or a partial object."""
    store, key = target.store, target.key("atomic/obj")
    size = 2 * MiB
    versions = [bytes([65 + i]) * size for i in range(3)]
    store.put_bytes(key, versions[0])
    stop = threading.Event()
    errors: list[BaseException] = []

    def writer() -> None:
        try:
            i = 0
            while not stop.is_set():
                i += 1
                store.put_bytes(key, versions[i % len(versions)])
        except BaseException as exc:
            errors.append(exc)

    thread = threading.Thread(target=writer)
    thread.start()
    try:
        seen = set()
        deadline = time.monotonic() + (1.0 if target.kind == "local" else 2.0)
        while time.monotonic() < deadline:
            data = store.read_bytes(key)
            assert data in versions, f"torn read: {len(data)} bytes"
            seen.add(data[:1])
    finally:
        stop.set()
        thread.join()
    assert not errors
    assert len(seen) >= 2  # the reader really raced the writer


# --------------------------------------------------------------------------- local only


def test_local_put_leaves_no_temp_files_and_creates_parents(tmp_path: Path) -> None:
    store = LocalStore()
    key = str(tmp_path / "a" / "b" / "c.json")
    store.put_bytes(key, b"{}")
    store.put_stream(str(tmp_path / "a" / "s.bin"), ChunkReader(3 * MiB))
    files = sorted(p.relative_to(tmp_path).as_posix() for p in tmp_path.rglob("*") if p.is_file())
    assert files == ["a/b/c.json", "a/s.bin"]


def test_local_relative_keys(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.chdir(tmp_path)
    store, key = open_uri("rel/dir/x.jsonl")
    assert isinstance(store, LocalStore)
    store.put_bytes(key, b"1")
    assert (tmp_path / "rel/dir/x.jsonl").read_bytes() == b"1"
    assert store.list_keys("rel/") == ["rel/dir/x.jsonl"]
    assert store.list_keys("rel/dir/x") == ["rel/dir/x.jsonl"]
    assert store.list_keys("") == ["rel/dir/x.jsonl"]


def test_local_temp_files_are_not_listed(tmp_path: Path) -> None:
    (tmp_path / ".out.jsonl.0123abcd.openbatch-tmp").write_bytes(b"partial")
    (tmp_path / "done.jsonl").write_bytes(b"ok")
    assert LocalStore().list_keys(f"{tmp_path}/") == [f"{tmp_path}/done.jsonl"]


def test_local_etag_format(tmp_path: Path) -> None:
    path = tmp_path / "f"
    path.write_bytes(b"12345")
    info = LocalStore().stat(str(path))
    st = path.stat()
    assert info is not None
    assert info.etag == f"{st.st_mtime_ns}-5"
    assert LocalStore().stat(str(tmp_path)) is None  # a directory is not an object


def _dead_pid() -> int:
    proc = subprocess.Popen([sys.executable, "-c", "pass"])
    proc.wait()
    return proc.pid


def test_local_stale_temporaries_are_removed_and_live_ones_kept(tmp_path: Path) -> None:
    store = LocalStore()
    store.put_bytes(f"{tmp_path}/w/shard-0/out-00000000-ab.jsonl", b"ok")
    host = _HOST
    dead = tmp_path / f"w/shard-0/.out-00000001-ab.jsonl.{host}-{_dead_pid()}-01.openbatch-tmp"
    live = tmp_path / f"w/shard-0/.out-00000002-ab.jsonl.{host}-{os.getpid()}-02.openbatch-tmp"
    foreign_old = tmp_path / "w/.result.json.0123abcd4567.openbatch-tmp"  # an older version
    foreign_new = tmp_path / "w/.progress.json.ffff0000-1-03.openbatch-tmp"  # another host
    elsewhere = tmp_path / f".other.jsonl.{host}-{_dead_pid()}-04.openbatch-tmp"
    for path in (dead, live, foreign_old, foreign_new, elsewhere):
        path.write_bytes(b"partial")
    hour_ago = time.time() - 3700
    os.utime(foreign_old, (hour_ago, hour_ago))
    assert store.remove_stale_temporaries(f"{tmp_path}/w/") == 2
    assert not dead.exists() and not foreign_old.exists()
    assert live.exists() and foreign_new.exists() and elsewhere.exists()
    assert store.list_keys(f"{tmp_path}/w/") == [f"{tmp_path}/w/shard-0/out-00000000-ab.jsonl"]
    # A prefix naming one object covers that object's temporaries only.
    assert store.remove_stale_temporaries(f"{tmp_path}/other.jsonl") == 1
    assert not elsewhere.exists()


def test_local_check_writable(tmp_path: Path) -> None:
    store = LocalStore()
    (tmp_path / "file").write_bytes(b"x")
    (tmp_path / "dir").mkdir()
    store.check_writable(f"{tmp_path}/new/deeper/out.jsonl")  # parents made on write
    store.check_writable(f"{tmp_path}/file")  # replaced on write
    assert not (tmp_path / "new").exists()  # the check writes nothing
    assert list(tmp_path.glob(".*")) == []
    for key, message in [
        (f"{tmp_path}/dir", "is a directory"),
        (f"{tmp_path}/file/out.jsonl", "is not a directory"),
        (f"{tmp_path}/file/a/b", "is not a directory"),
    ]:
        with pytest.raises(StorageError, match=message) as info:
            store.check_writable(key)
        assert not info.value.transient


def test_s3_check_writable_finds_a_missing_bucket(seaweed: SeaweedServer, s3_bucket: str) -> None:
    S3Store(s3_bucket, seaweed.settings()).check_writable("out.jsonl")
    missing = S3Store(unique_bucket_name("missing"), seaweed.settings())
    with pytest.raises(StorageError, match="does not exist") as info:
        missing.check_writable("out.jsonl")
    assert not info.value.transient


# --------------------------------------------------------------------------- S3 errors


@pytest.mark.parametrize("region", [None, "us-east-1"])
def test_s3_missing_bucket_is_a_clear_permanent_error(
    seaweed: SeaweedServer, region: str | None
) -> None:
    bucket = unique_bucket_name("missing")
    store = S3Store(bucket, seaweed.settings(region=region))
    operations: list[Callable[[], object]] = [
        lambda: store.stat("k"),
        lambda: store.read_bytes("k"),
        lambda: store.put_bytes("k", b"x"),
        lambda: store.list_keys(""),
    ]
    for operation in operations:
        started = time.monotonic()
        with pytest.raises(StorageError) as info:
            operation()
        assert time.monotonic() - started < 2, "a permanent error must not be retried"
        assert not isinstance(info.value, ObjectNotFound)
        assert not info.value.transient
        message = str(info.value)
        assert "does not exist" in message
        assert bucket in message
        assert seaweed.endpoint in message


@pytest.mark.parametrize("wrong", ["secret", "access"])
def test_s3_bad_credentials_are_a_clear_permanent_error(
    seaweed: SeaweedServer, s3_bucket: str, wrong: str
) -> None:
    seaweed.client().put_object(s3_bucket, "k", io.BytesIO(b"x"), 1)
    overrides = {"secret_key": "wrong-secret"} if wrong == "secret" else {"access_key": "nobody"}
    store = S3Store(s3_bucket, seaweed.settings(**overrides))
    operations: list[Callable[[], object]] = [
        lambda: store.stat("k"),
        lambda: store.read_bytes("k"),
        lambda: store.put_bytes("k2", b"x"),
        lambda: store.list_keys(""),
    ]
    for operation in operations:
        started = time.monotonic()
        with pytest.raises(StorageError) as info:
            operation()
        assert time.monotonic() - started < 2
        assert not info.value.transient
        assert "access denied" in str(info.value)
        assert s3_bucket in str(info.value)


def test_s3_unreachable_endpoint_is_transient_after_retry_seconds() -> None:
    settings = S3Settings(
        endpoint=f"http://127.0.0.1:{_closed_port()}",
        access_key="a",
        secret_key="b",  # noqa: S106  # nothing listens; never sent
        region="us-east-1",
        retry_seconds=0.6,
    )
    store = S3Store("some-bucket", settings)
    started = time.monotonic()
    with pytest.raises(StorageError) as info:
        store.stat("k")
    elapsed = time.monotonic() - started
    assert info.value.transient
    assert 0.5 <= elapsed < 3
    assert settings.endpoint in str(info.value)
    assert "s3://some-bucket/k" in str(info.value)

    # A non-rewindable reader cannot be retried once consumed: fail at once, say why.
    started = time.monotonic()
    with pytest.raises(StorageError, match="cannot be rewound") as info:
        store.put_stream("k", ChunkReader(MiB))
    assert info.value.transient
    assert time.monotonic() - started < 0.5
    # A seekable one is retried until the deadline.
    with pytest.raises(StorageError, match="failing for") as info:
        store.put_stream("k", io.BytesIO(b"abc"))
    assert info.value.transient


def test_s3_reader_resumes_after_a_dropped_connection(
    seaweed: SeaweedServer, s3_bucket: str
) -> None:
    store = S3Store(s3_bucket, seaweed.settings())
    data = random.Random(3).randbytes(3 * MiB)
    store.put_bytes("obj", data)
    with store.open_read("obj", offset=100) as reader:
        assert isinstance(reader, S3ObjectReader)
        head = reader.read(MiB)
        reader._drop()  # simulate a connection that died between two reads
        rest = reader.read()
        assert reader.reconnects == 1
    assert head + rest == data[100:]


def test_s3_reader_refuses_an_object_that_changed(seaweed: SeaweedServer, s3_bucket: str) -> None:
    store = S3Store(s3_bucket, seaweed.settings())
    store.put_bytes("obj", b"a" * (2 * MiB))
    with store.open_read("obj") as reader:
        assert isinstance(reader, S3ObjectReader)
        assert reader.read(MiB) == b"a" * MiB
        store.put_bytes("obj", b"b" * (2 * MiB))
        reader._drop()  # the reopen must notice that the bytes now belong to another object
        with pytest.raises(StorageError, match="object changed while reading") as info:
            reader.read(MiB)
        assert not info.value.transient


def test_s3_bucket_names_are_validated(s3_settings: S3Settings) -> None:
    for bad in ("b", "UPPER", "a_b", "-ab", "ab-", "a..b"):
        with pytest.raises(ValueError, match="invalid S3 bucket name"):
            S3Store(bad, s3_settings)
    with pytest.raises(ValueError, match="empty object key"):
        S3Store("okay", s3_settings).stat("")


# --------------------------------------------------------------------------- URIs


@pytest.mark.parametrize(
    ("uri", "expected"),
    [
        ("s3://b/k", ("b", "k")),
        ("s3://bucket/a/b/c.jsonl", ("bucket", "a/b/c.jsonl")),
        ("s3://b/", ("b", "")),
        ("s3://b", ("b", "")),
        ("S3://b/k", ("b", "k")),
        ("s3://my.bucket-1/dir/", ("my.bucket-1", "dir/")),
        ("/tmp/x", (None, "/tmp/x")),
        ("/tmp/dir/", (None, "/tmp/dir/")),
        ("data/x.jsonl", (None, "data/x.jsonl")),
        ("./x", (None, "./x")),
        ("file:///tmp/x", (None, "/tmp/x")),
    ],
)
def test_split_uri(uri: str, expected: tuple[str | None, str]) -> None:
    assert split_uri(uri) == expected


@pytest.mark.parametrize(
    ("uri", "message"),
    [
        ("", "empty"),
        ("s3://", "no bucket"),
        ("s3:///key", "no bucket"),
        ("s3://Bad_Bucket/k", "invalid bucket name"),
        ("gs://b/k", "unsupported storage URI scheme 'gs'"),
        ("http://host/x", "unsupported storage URI scheme 'http'"),
        ("file://relative", "must be absolute"),
    ],
)
def test_split_uri_invalid(uri: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        split_uri(uri)


def test_open_uri_local(tmp_path: Path) -> None:
    store, key = open_uri(f"{tmp_path}/x.jsonl")
    assert isinstance(store, LocalStore)
    assert key == f"{tmp_path}/x.jsonl"
    store, key = open_uri(f"file://{tmp_path}/y")
    assert isinstance(store, LocalStore)
    assert key == f"{tmp_path}/y"


def test_open_uri_s3_with_settings(seaweed: SeaweedServer, s3_bucket: str) -> None:
    store, key = open_uri(f"s3://{s3_bucket}/in/x.jsonl", seaweed.settings())
    assert isinstance(store, S3Store)
    assert key == "in/x.jsonl"
    store.put_bytes(key, b"{}\n")
    assert store.read_bytes(key) == b"{}\n"


def test_open_uri_s3_from_environment(
    seaweed: SeaweedServer, s3_bucket: str, monkeypatch: pytest.MonkeyPatch
) -> None:
    for name, value in seaweed.env().items():
        monkeypatch.setenv(name, value)
    store, key = open_uri(f"s3://{s3_bucket}/env")
    assert isinstance(store, S3Store)
    assert store.settings.endpoint == seaweed.endpoint
    store.put_bytes(key, b"1")

    # AWS_* fall back when the OpenBatch variables are unset.
    monkeypatch.delenv("OPENBATCH_S3_ACCESS_KEY")
    monkeypatch.delenv("OPENBATCH_S3_SECRET_KEY")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", seaweed.access_key)
    monkeypatch.setenv("AWS_SECRET_ACCESS_KEY", seaweed.secret_key)
    store, key = open_uri(f"s3://{s3_bucket}/env")
    assert store.read_bytes(key) == b"1"

    monkeypatch.delenv("AWS_ACCESS_KEY_ID")
    monkeypatch.delenv("AWS_SECRET_ACCESS_KEY")
    with pytest.raises(StorageError, match="OPENBATCH_S3_ACCESS_KEY"):
        open_uri(f"s3://{s3_bucket}/env")


def test_settings_env_names(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("OPENBATCH_S3_ENDPOINT", "https://s3.example.com:8443/")
    monkeypatch.setenv("OPENBATCH_S3_ACCESS_KEY", "ak")
    monkeypatch.setenv("OPENBATCH_S3_SECRET_KEY", "sk")
    monkeypatch.setenv("AWS_ACCESS_KEY_ID", "ignored")
    monkeypatch.setenv("OPENBATCH_S3_REGION", "eu-west-1")
    monkeypatch.setenv("OPENBATCH_S3_RETRY_SECONDS", "7.5")
    monkeypatch.setenv("OPENBATCH_S3_CONNECT_TIMEOUT", "1")
    monkeypatch.setenv("OPENBATCH_S3_READ_TIMEOUT", "2")
    settings = S3Settings()
    assert settings.endpoint == "https://s3.example.com:8443"
    assert settings.secure
    assert settings.netloc == "s3.example.com:8443"
    assert (settings.access_key, settings.secret_key) == ("ak", "sk")
    assert settings.region == "eu-west-1"
    assert (settings.retry_seconds, settings.connect_timeout, settings.read_timeout) == (
        7.5,
        1.0,
        2.0,
    )
    assert "sk" not in repr(settings)
    monkeypatch.setenv("OPENBATCH_S3_ENDPOINT", "127.0.0.1:9000")
    with pytest.raises(ValueError, match="must look like"):
        S3Settings()


@pytest.mark.parametrize(
    ("prefix", "name", "expected"),
    [
        ("", "x", "x"),
        ("a", "x", "a/x"),
        ("a/", "x", "a/x"),
        ("a//", "/x", "a/x"),
        ("/", "x", "/x"),
        ("s3://b/w/", "shard-0/p", "s3://b/w/shard-0/p"),
    ],
)
def test_join_key(prefix: str, name: str, expected: str) -> None:
    assert join_key(prefix, name) == expected


# --------------------------------------------------------------------------- outages


def _restart_later(server: SeaweedServer, delay: float) -> tuple[threading.Thread, list[object]]:
    """Start `server` again after `delay` seconds (the outage) from a background thread."""
    outcome: list[object] = []

    def run() -> None:
        time.sleep(delay)  # the outage itself, not a readiness wait
        try:
            outcome.append(server.start())
        except BaseException as exc:
            outcome.append(exc)

    thread = threading.Thread(target=run, name="seaweed-restart")
    thread.start()
    return thread, outcome


def test_streaming_read_survives_an_outage(seaweed_outage: SeaweedServer) -> None:
    server = seaweed_outage
    bucket = server.make_bucket("outage-read")
    store = S3Store(bucket, server.settings(retry_seconds=30))
    total = 20 * MiB
    source = ChunkReader(total)
    store.put_stream("input.jsonl", source)

    started = time.monotonic()
    reader = store.open_read("input.jsonl")
    assert isinstance(reader, S3ObjectReader)
    digest = hashlib.sha256()
    first = reader.read(MiB)
    digest.update(first)
    server.stop()  # SIGTERM mid-stream: the open response loses its server
    thread, outcome = _restart_later(server, 2.0)
    try:
        received = len(first)
        while chunk := reader.read(MiB):
            digest.update(chunk)
            received += len(chunk)
    finally:
        reader.close()
        thread.join(timeout=60)
    assert not any(isinstance(o, BaseException) for o in outcome), outcome
    assert received == total
    assert digest.hexdigest() == source.digest.hexdigest()
    assert reader.reconnects >= 1
    assert time.monotonic() - started < 45


def test_writes_during_an_outage_succeed_once_the_server_is_back(
    seaweed_outage: SeaweedServer,
) -> None:
    server = seaweed_outage
    bucket = server.make_bucket("outage-write")
    store = S3Store(bucket, server.settings(retry_seconds=30))
    store.put_bytes("before", b"1")  # warms the pool: its connection goes stale in the outage

    server.stop(graceful=False)  # a crash this time; the read test covers a clean stop
    thread, outcome = _restart_later(server, 2.0)
    try:
        started = time.monotonic()
        store.put_bytes("shard-0/out-00000001.jsonl", b'{"id": 1}\n')
        waited = time.monotonic() - started
        assert store.put_stream("shard-0/out-00000002.jsonl", io.BytesIO(b"x" * MiB)) == MiB
    finally:
        thread.join(timeout=60)
    assert not any(isinstance(o, BaseException) for o in outcome), outcome
    assert waited >= 1.5, "the write cannot have succeeded while the server was down"
    assert store.read_bytes("shard-0/out-00000001.jsonl") == b'{"id": 1}\n'
    assert store.list_keys("shard-0/") == [
        "shard-0/out-00000001.jsonl",
        "shard-0/out-00000002.jsonl",
    ]
    assert store.read_bytes("before") == b"1"


def test_put_stream_refuses_more_parts_than_s3_allows(
    s3_bucket: str, s3_settings: S3Settings
) -> None:
    store = S3Store(s3_bucket, s3_settings)
    store.MAX_PARTS = 2  # S3's limit is 10,000 parts; two keep the test small
    with pytest.raises(StorageError, match="more than 2 parts") as info:
        store.put_stream("too/big", ChunkReader(2 * PART_SIZE + 1))
    assert not info.value.transient
    assert store.stat("too/big") is None
    pending = store._client._list_multipart_uploads(s3_bucket, prefix="too/")
    assert pending.uploads == []  # aborted, not left holding two parts


def test_put_stream_sends_the_next_part_when_any_part_is_done(
    s3_bucket: str, s3_settings: S3Settings
) -> None:
    # Part 1 is held until part 4 has started: with two parts in flight, that happens only
    # if parts 3 and 4 do not wait behind part 1 (in-order waiting would hold it for the
    # whole timeout). The object still assembles in order.
    store = S3Store(s3_bucket, s3_settings, part_size=MIN_PART_SIZE)
    real = store._client._upload_part
    fourth_started = threading.Event()
    waited_for_the_fourth: list[bool] = []

    def upload_part(*args: object) -> str:
        number = int(args[-1])  # type: ignore[call-overload]
        if number == 4:
            fourth_started.set()
        if number == 1:
            waited_for_the_fourth.append(fourth_started.wait(timeout=20))
        return real(*args)  # type: ignore[arg-type]

    store._client._upload_part = upload_part  # type: ignore[method-assign,assignment]
    data = random.Random(7).randbytes(4 * MIN_PART_SIZE + 123)
    assert store.put_stream("out/of-order", io.BytesIO(data)) == len(data)
    assert waited_for_the_fourth == [True]
    assert store.read_bytes("out/of-order") == data
