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
from pathlib import Path

import orjson


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


def main() -> None:
    parser = argparse.ArgumentParser()
    parser.add_argument("--sizes", default="100,200", help="file sizes in MB (10^6 bytes)")
    parser.add_argument(
        "--repeat", type=int, default=3, help="transfers per size and side, interleaved (median)"
    )
    args = parser.parse_args()

    import openai

    from tests.fixtures.s3 import SeaweedServer, unique_bucket_name
    from tests.fixtures.shim import start_serve

    rows = []
    with tempfile.TemporaryDirectory() as tmp_name:
        tmp = Path(tmp_name)
        seaweed = SeaweedServer(tmp / "seaweed")
        seaweed.start()
        try:
            os.environ.update(seaweed.env())
            bucket = seaweed.make_bucket(unique_bucket_name("b9"))
            minio = seaweed.client()
            for mb in (int(s) for s in args.sizes.split(",")):
                path = tmp / f"in-{mb}.jsonl"
                size = write_jsonl_of_size(path, mb * 1_000_000)

                os.environ["OPENBATCH_SHIM_STORAGE_ROOT"] = f"s3://{bucket}/shim-{mb}"
                serve = start_serve(tmp / f"serve-{mb}", models={"bench": "http://127.0.0.1:9/v1"})
                # A second shim over the same storage root (so it sees the same files) with
                # the opt-in download redirect (decision 0005).
                os.environ["OPENBATCH_SHIM_DOWNLOAD_REDIRECT_SECONDS"] = "600"
                redirecting = start_serve(
                    tmp / f"serve-redirect-{mb}", models={"bench": "http://127.0.0.1:9/v1"}
                )
                del os.environ["OPENBATCH_SHIM_DOWNLOAD_REDIRECT_SECONDS"]
                pid = serve.process.pid
                s3_puts, s3_gets, shim_puts, shim_gets = [], [], [], []
                curl_puts, curl_gets, redirect_gets, curl_redirect_gets = [], [], [], []
                curl_s3_gets: list[float] = []
                put_rss, get_rss = 0.0, 0.0
                put_cpu: list[float] = []  # the shim's CPU-seconds per transfer (openai)
                get_cpu: list[float] = []
                try:
                    client = openai.OpenAI(base_url=serve.base_url, api_key="b", max_retries=0)
                    idle = peak_rss_mb(pid)
                    # Direct and shim transfers interleave, so a slow spell of the machine or
                    # of SeaweedFS hits both sides alike; each side's median is reported.
                    for _ in range(args.repeat):
                        started = time.monotonic()
                        minio.fput_object(bucket, f"direct/{mb}.jsonl", str(path))
                        s3_puts.append(time.monotonic() - started)

                        reset_peak_rss(pid)
                        cpu = cpu_seconds(pid)
                        started = time.monotonic()
                        with path.open("rb") as f:
                            uploaded = client.files.create(file=f, purpose="batch")
                        shim_puts.append(time.monotonic() - started)
                        put_cpu.append(cpu_seconds(pid) - cpu)
                        put_rss = max(put_rss, peak_rss_mb(pid))
                        assert uploaded.bytes == size, uploaded

                        # The same upload by curl (C): the shim's own ceiling, without the
                        # Python client's.
                        started = time.monotonic()
                        posted = subprocess.run(
                            [
                                *["curl", "-sS", "-H", "Authorization: Bearer b"],
                                *["-F", "purpose=batch", "-F", f"file=@{path}"],
                                f"{serve.base_url}/files",
                            ],
                            capture_output=True,
                            check=True,
                        )
                        curl_puts.append(time.monotonic() - started)
                        curled = orjson.loads(posted.stdout)
                        assert curled["bytes"] == size, curled
                        client.files.delete(curled["id"])

                        # Both downloads are read to the end and counted, not written to a
                        # file: on this machine's disk, overwriting a 200 MB file costs more
                        # than the transfer (and minio's fget writes a fresh file, unfairly).
                        started = time.monotonic()
                        direct = minio.get_object(bucket, f"direct/{mb}.jsonl")
                        got = sum(len(c) for c in direct.stream(1 << 20))
                        direct.close()
                        direct.release_conn()
                        s3_gets.append(time.monotonic() - started)
                        assert got == size

                        # The same direct GET by curl (SigV4), the baseline of curl's own
                        # downloads through the shim: the same client on both sides.
                        started = time.monotonic()
                        fetched = subprocess.run(
                            [
                                *["curl", "-sS", "--fail", "-o", os.devnull],
                                *["-w", "%{size_download}", "--aws-sigv4", "aws:amz:us-east-1:s3"],
                                *["--user", f"{seaweed.access_key}:{seaweed.secret_key}"],
                                f"{seaweed.endpoint}/{bucket}/direct/{mb}.jsonl",
                            ],
                            capture_output=True,
                            text=True,
                            check=True,
                        )
                        curl_s3_gets.append(time.monotonic() - started)
                        assert int(fetched.stdout) == size

                        reset_peak_rss(pid)
                        cpu = cpu_seconds(pid)
                        started = time.monotonic()
                        with client.files.with_streaming_response.content(uploaded.id) as response:
                            got = sum(len(c) for c in response.iter_bytes(1 << 20))
                        shim_gets.append(time.monotonic() - started)
                        get_cpu.append(cpu_seconds(pid) - cpu)
                        get_rss = max(get_rss, peak_rss_mb(pid))
                        assert got == size

                        # The same download by curl (C, to /dev/null): the shim's own ceiling,
                        # without the Python client's (httpx/h11 reads 64 KiB at a time).
                        started = time.monotonic()
                        fetched = subprocess.run(
                            [
                                *["curl", "-sS", "-o", os.devnull, "-w", "%{size_download}"],
                                *["-H", "Authorization: Bearer b"],
                                f"{serve.base_url}/files/{uploaded.id}/content",
                            ],
                            capture_output=True,
                            text=True,
                            check=True,
                        )
                        curl_gets.append(time.monotonic() - started)
                        assert int(fetched.stdout) == size

                        # Redirected downloads: a 307 from the shim, the bytes from S3.
                        other = openai.OpenAI(
                            base_url=redirecting.base_url, api_key="b", max_retries=0
                        )
                        started = time.monotonic()
                        with other.files.with_streaming_response.content(uploaded.id) as response:
                            got = sum(len(c) for c in response.iter_bytes(1 << 20))
                        redirect_gets.append(time.monotonic() - started)
                        assert got == size
                        started = time.monotonic()
                        fetched = subprocess.run(
                            [
                                *["curl", "-sS", "-L", "-o", os.devnull, "-w", "%{size_download}"],
                                *["-H", "Authorization: Bearer b"],
                                f"{redirecting.base_url}/files/{uploaded.id}/content",
                            ],
                            capture_output=True,
                            text=True,
                            check=True,
                        )
                        curl_redirect_gets.append(time.monotonic() - started)
                        assert int(fetched.stdout) == size
                        client.files.delete(uploaded.id)
                finally:
                    serve.stop()
                    redirecting.stop()
                rows.append(
                    (
                        mb, size, median(s3_puts), median(shim_puts), median(curl_puts),
                        median(s3_gets), median(shim_gets), median(curl_gets),
                        median(redirect_gets), median(curl_redirect_gets), median(curl_s3_gets),
                        median(put_cpu), median(get_cpu), idle, put_rss, get_rss,
                    )
                )  # fmt: skip
                print(f"  {mb} MB done", flush=True)
        finally:
            seaweed.stop()

    def cell(size: int, took: float, baseline: float) -> list[str]:
        return [f"{size / 1e6 / took:.0f} MB/s", f"**{baseline / took:.2f}**"]

    print("Uploads (ratio: shim / direct PUT by minio, 3 parts at once)")
    print(
        "| file | direct PUT | shim (openai) | ratio | shim (curl) | ratio "
        "| shim CPU per transfer | shim MB per CPU-second | peak RSS |"
    )
    print("|---" * 9 + "|")
    for row in rows:
        mb, size, s3_put, shim_put, curl_put, *_, put_cpu_s, _, _, put_rss, _ = row
        cells = [f"{mb} MB", f"{size / 1e6 / s3_put:.0f} MB/s"]
        cells += cell(size, shim_put, s3_put) + cell(size, curl_put, s3_put)
        cells += [f"{put_cpu_s:.2f} s", f"{size / 1e6 / put_cpu_s:.0f}", f"{put_rss:.1f} MB"]
        print("| " + " | ".join(cells) + " |")
    print()
    print(
        "Downloads (ratio: the Python clients against minio's direct GET, curl against "
        "curl's direct GET)"
    )
    print(
        "| file | direct GET (minio) | shim (openai) | ratio | redirected (openai) | ratio "
        "| direct GET (curl) | shim (curl) | ratio | redirected (curl -L) | ratio "
        "| shim CPU per relay | peak RSS |"
    )
    print("|---" * 13 + "|")
    for row in rows:
        mb, size, _, _, _, s3_get, shim_get, curl_get, redirect_get, curl_redirect, *rest = row
        curl_s3_get, _, get_cpu_s, _, _, get_rss = rest
        cells = [f"{mb} MB", f"{size / 1e6 / s3_get:.0f} MB/s"]
        cells += cell(size, shim_get, s3_get) + cell(size, redirect_get, s3_get)
        cells.append(f"{size / 1e6 / curl_s3_get:.0f} MB/s")
        cells += cell(size, curl_get, curl_s3_get) + cell(size, curl_redirect, curl_s3_get)
        print("| " + " | ".join([*cells, f"{get_cpu_s:.2f} s", f"{get_rss:.1f} MB"]) + " |")
    print(
        f"medians of {args.repeat} interleaved transfers per cell; target ratio ≥ 0.8; "
        "'redirected': a 307 to a presigned S3 URL from a second shim with "
        "OPENBATCH_SHIM_DOWNLOAD_REDIRECT_SECONDS set (opt-in); downloads are read and "
        "counted, not written to disk; shim CPU: user + system seconds of the relaying "
        "shim during the openai client's transfer; RSS: its VmHWM, reset before each "
        f"transfer (target ≤ 100 MB; idle {rows[0][-3]:.1f} MB)"
    )


if __name__ == "__main__":
    main()
