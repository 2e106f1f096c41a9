"""B13: upload and download of a large batch file through the shim vs straight to S3.

`openbatch serve` with its storage on SeaweedFS (OPENBATCH_SHIM_STORAGE_ROOT=s3://…, the
OPENBATCH_S3_* credentials) against a direct S3 PUT/GET (the minio client) of the same
bytes to the same SeaweedFS, in the same run. Throughput ratio target ≥ 0.8. The shim
process's peak RSS (VmHWM, a fresh process per size) target ≤ 100 MB and flat when the file
doubles (100 MB and 200 MB).

    python -m bench.b13_shim_transfer [--sizes 100,200]
"""

from __future__ import annotations

import argparse
import os
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import TYPE_CHECKING

import orjson

if TYPE_CHECKING:
    from tests.fixtures.s3 import SeaweedServer


def write_jsonl_of_size(path: Path, size: int) -> int:
    """Chat lines of ~1 KB until the file has `size` bytes (the last line is cut to fit)."""
    pad = "x" * 900
    written = 0
    with path.open("wb") as f:
        i = 0
        while written < size:
            line = {
                "custom_id": f"req-{i}",
                "method": "POST",
                "url": "/v1/chat/completions",
                "body": {"model": "bench", "messages": [{"role": "user", "content": pad}]},
            }
            data = orjson.dumps(line) + b"\n"
            f.write(data[: size - written])
            written += min(len(data), size - written)
            i += 1
    return written


def peak_rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmHWM:"):
            return int(line.split()[1]) / 1024
    return float("nan")


def cpu_seconds(pid: int) -> float:
    """User + system CPU time the process has used so far."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def reset_peak_rss(pid: int) -> None:
    """Start VmHWM again from the current RSS (Linux `clear_refs` 5), to tell phases apart."""
    Path(f"/proc/{pid}/clear_refs").write_text("5")


def median(values: list[float]) -> float:
    ordered = sorted(values)
    return ordered[len(ordered) // 2]


def curl_get(url: str, *extra: str) -> int:
    """GET `url` with curl to /dev/null; the bytes it received."""
    fetched = subprocess.run(
        ["curl", "-sS", "--fail", "-o", os.devnull, "-w", "%{size_download}", *extra, url],
        capture_output=True,
        text=True,
        check=True,
    )
    return int(fetched.stdout)


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,200", help="file sizes in MB (10^6 bytes)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="transfers per size and side, interleaved (median)"
    )
    args = parser.parse_args()

    from tests.fixtures.s3 import SeaweedServer, unique_bucket_name

    rows: list[tuple[int, int, dict[str, float]]] = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        seaweed = SeaweedServer(tmp / "seaweed")
        seaweed.start()
        try:
            os.environ.update(seaweed.env())
            bucket = seaweed.make_bucket(unique_bucket_name("b9"))
            for mb in (int(s) for s in args.sizes.split(",")):
                rows.append(measure(tmp, seaweed, bucket, mb, args.repeat))
                print(f"  {mb} MB done", flush=True)
        finally:
            seaweed.stop()
    print_tables(rows, args.repeat)


def measure(
    tmp: Path, seaweed: SeaweedServer, bucket: str, mb: int, repeat: int
) -> tuple[int, int, dict[str, float]]:
    """Medians of every transfer of one file size, the shim's CPU and peak RSS."""
    import httpx
    import openai

    from tests.fixtures.shim import start_serve

    path = tmp / f"in-{mb}.jsonl"
    size = write_jsonl_of_size(path, mb * 1_000_000)
    minio = seaweed.client()
    direct_key = f"direct/{mb}.jsonl"
    direct_url = f"{seaweed.endpoint}/{bucket}/{direct_key}"
    sigv4 = ["--aws-sigv4", "aws:amz:us-east-1:s3"]
    sigv4 += ["--user", f"{seaweed.access_key}:{seaweed.secret_key}"]
    bearer = ["-H", "Authorization: Bearer b"]
    models = {"bench": "http://127.0.0.1:9/v1"}

    os.environ["OPENBATCH_SHIM_STORAGE_ROOT"] = f"s3://{bucket}/shim-{mb}"
    serve = start_serve(tmp / f"serve-{mb}", models=models)
    # A second shim over the same storage root (so it sees the same files) with the opt-in
    # download redirect (decision 0005).
    os.environ["OPENBATCH_SHIM_DOWNLOAD_REDIRECT_SECONDS"] = "600"
    redirecting = start_serve(tmp / f"serve-redirect-{mb}", models=models)
    del os.environ["OPENBATCH_SHIM_DOWNLOAD_REDIRECT_SECONDS"]
    pid = serve.process.pid
    took: dict[str, list[float]] = {}
    peaks = {"put_rss": 0.0, "get_rss": 0.0}

    def timed(name: str, transfer: Callable[[], int], rss: str | None = None) -> None:
        """Time one transfer (and the shim's CPU and peak RSS during it, when `rss`)."""
        if rss is not None:
            reset_peak_rss(pid)
        cpu = cpu_seconds(pid)
        started = time.monotonic()
        got = transfer()
        took.setdefault(name, []).append(time.monotonic() - started)
        took.setdefault(name + " cpu", []).append(cpu_seconds(pid) - cpu)
        if rss is not None:
            peaks[rss] = max(peaks[rss], peak_rss_mb(pid))
        assert got == size, (name, got, size)

    client = openai.OpenAI(base_url=serve.base_url, api_key="b", max_retries=0)
    redirected = openai.OpenAI(base_url=redirecting.base_url, api_key="b", max_retries=0)
    http = httpx.Client()
    uploaded: list[str] = []

    def put_minio() -> int:
        minio.fput_object(bucket, direct_key, str(path))
        return size

    def put_openai() -> int:
        with path.open("rb") as f:
            file = client.files.create(file=f, purpose="batch")
        uploaded.append(file.id)
        return file.bytes

    def put_curl() -> int:
        posted = subprocess.run(
            [
                *["curl", "-sS", *bearer, "-F", "purpose=batch", "-F", f"file=@{path}"],
                f"{serve.base_url}/files",
            ],
            capture_output=True,
            check=True,
        )
        curled = orjson.loads(posted.stdout)
        client.files.delete(curled["id"])
        return int(curled["bytes"])

    def get_minio() -> int:
        response = minio.get_object(bucket, direct_key)
        try:
            return sum(len(c) for c in response.stream(1 << 20))
        finally:
            response.close()
            response.release_conn()

    def get_httpx() -> int:
        with http.stream("GET", minio.presigned_get_object(bucket, direct_key)) as response:
            return sum(len(c) for c in response.iter_bytes(1 << 20))

    def get_openai(through: openai.OpenAI) -> int:
        with through.files.with_streaming_response.content(uploaded[-1]) as response:
            return sum(len(c) for c in response.iter_bytes(1 << 20))

    def get_curl(base_url: str, *extra: str) -> int:
        return curl_get(f"{base_url}/files/{uploaded[-1]}/content", *bearer, *extra)

    idle = peak_rss_mb(pid)
    try:
        # Direct and shim transfers interleave, so a slow spell of the machine or of
        # SeaweedFS hits both sides alike; each side's median is reported. Downloads are
        # read to the end and counted, not written to a file (overwriting a 200 MB file on
        # this machine's disk cost more than the transfer). Each client's downloads are
        # compared with a direct GET by the same kind of client.
        for _ in range(repeat):
            timed("put minio", put_minio)
            timed("put openai", put_openai, rss="put_rss")
            timed("put curl", put_curl)
            timed("get minio", get_minio)
            timed("get httpx", get_httpx)
            timed("get curl", lambda: curl_get(direct_url, *sigv4))
            timed("relay openai", lambda: get_openai(client), rss="get_rss")
            timed("relay curl", lambda: get_curl(serve.base_url))
            timed("redirect openai", lambda: get_openai(redirected))
            timed("redirect curl", lambda: get_curl(redirecting.base_url, "-L"))
            client.files.delete(uploaded[-1])
    finally:
        http.close()
        serve.stop()
        redirecting.stop()
    medians = {name: median(values) for name, values in took.items()}
    medians.update(idle=idle, **peaks)
    return mb, size, medians


def print_tables(rows: list[tuple[int, int, dict[str, float]]], repeat: int) -> None:
    def rate(size: int, took: float) -> str:
        return f"{size / 1e6 / took:.0f} MB/s"

    def pair(size: int, took: float, baseline: float) -> list[str]:
        return [rate(size, took), f"**{baseline / took:.2f}**"]

    print("Uploads (ratio: shim / direct PUT by minio, 3 parts at once)")
    print(
        "| file | direct PUT | shim (openai) | ratio | shim (curl) | ratio "
        "| shim CPU per transfer | shim MB per CPU-second | peak RSS |"
    )
    print("|---" * 9 + "|")
    for mb, size, m in rows:
        cells = [f"{mb} MB", rate(size, m["put minio"])]
        cells += pair(size, m["put openai"], m["put minio"])
        cells += pair(size, m["put curl"], m["put minio"])
        cells += [f"{m['put openai cpu']:.2f} s", f"{size / 1e6 / m['put openai cpu']:.0f}"]
        print("| " + " | ".join([*cells, f"{m['put_rss']:.1f} MB"]) + " |")
    print()
    print(
        "Downloads (ratio: through the shim / a direct GET by the same kind of client: the "
        "openai client (httpx) against httpx reading a presigned URL, curl against curl "
        "with SigV4)"
    )
    print(
        "| file | direct: minio | httpx | curl | relayed: openai | ratio | curl | ratio "
        "| redirected: openai | ratio | curl -L | ratio | shim CPU per relay | peak RSS |"
    )
    print("|---" * 14 + "|")
    for mb, size, m in rows:
        cells = [f"{mb} MB", rate(size, m["get minio"])]
        cells += [rate(size, m["get httpx"]), rate(size, m["get curl"])]
        cells += pair(size, m["relay openai"], m["get httpx"])
        cells += pair(size, m["relay curl"], m["get curl"])
        cells += pair(size, m["redirect openai"], m["get httpx"])
        cells += pair(size, m["redirect curl"], m["get curl"])
        cells += [f"{m['relay openai cpu']:.2f} s", f"{m['get_rss']:.1f} MB"]
        print("| " + " | ".join(cells) + " |")
    print(
        f"medians of {repeat} interleaved transfers per cell; target ratio ≥ 0.8; "
        "'redirected': a 307 to a presigned S3 URL from a second shim with "
        "OPENBATCH_SHIM_DOWNLOAD_REDIRECT_SECONDS set (opt-in); shim CPU: user + system "
        "seconds of the relaying shim during the openai client's transfer; RSS: its VmHWM, "
        f"reset before each transfer (target ≤ 100 MB; idle {rows[0][2]['idle']:.1f} MB)"
    )


if __name__ == "__main__":
    main()
