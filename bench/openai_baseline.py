"""The hand-written comparison for B1: `AsyncOpenAI` + a semaphore, what a user would write.

Reads a batch JSONL, sends every body with the official client (bounded by a semaphore),
writes OpenAI-shaped output lines. No retries beyond the client's own, no resume.
Usage: python bench/openai_baseline.py INPUT OUTPUT BASE_URL CONCURRENCY
"""

from __future__ import annotations

import asyncio
import sys
import uuid
from typing import Any

import orjson
from openai import AsyncOpenAI


async def main(input_path: str, output_path: str, base_url: str, concurrency: int) -> None:
    client = AsyncOpenAI(base_url=base_url, api_key="bench", max_retries=2)
    sem = asyncio.Semaphore(concurrency)
    out = open(output_path, "wb")  # noqa: ASYNC230, SIM115  # one writer, closed below

    async def one(line: dict[str, Any]) -> None:
        async with sem:
            resp = await client.chat.completions.with_raw_response.create(**line["body"])
            body = resp.parse().model_dump()
            out.write(
                orjson.dumps(
                    {
                        "id": f"batch_req_{uuid.uuid4().hex}",
                        "custom_id": line["custom_id"],
                        "response": {
                            "status_code": resp.http_response.status_code,
                            "request_id": resp.headers.get("x-request-id"),
                            "body": body,
                        },
                        "error": None,
                    }
                )
                + b"\n"
            )

    tasks: set[asyncio.Task[None]] = set()
    with open(input_path, "rb") as f:  # noqa: ASYNC230  # local file, read line by line
        for raw in f:
            await sem.acquire()  # keep at most `concurrency` tasks alive
            sem.release()
            task = asyncio.create_task(one(orjson.loads(raw)))
            tasks.add(task)
            task.add_done_callback(tasks.discard)
            if len(tasks) >= concurrency * 2:
                await asyncio.wait(tasks, return_when=asyncio.FIRST_COMPLETED)
    await asyncio.gather(*tasks)
    out.close()
    await client.close()


if __name__ == "__main__":
    asyncio.run(main(sys.argv[1], sys.argv[2], sys.argv[3], int(sys.argv[4])))
