"""An async load generator for OpenAI-compatible servers: replay a trace, time every request."""

from __future__ import annotations

import asyncio
import json
import math
import time
from collections.abc import Sequence
from dataclasses import asdict, dataclass
from typing import Any

from hasten.serve.metrics import RequestRecord, summarize
from hasten.serve.request import Request

ENDPOINTS = {"chat": "/v1/chat/completions", "completions": "/v1/completions"}


@dataclass(frozen=True)
class LoadConfig:
    """Where to send a trace and how.

    ``url`` is the server's base (``http://127.0.0.1:8000``); ``model=None`` takes the
    first model the server lists. Each request asks for exactly its recorded
    ``output_tokens`` (``max_tokens`` with ``ignore_eos``, a vLLM extension), so runs
    differ only in scheduling. ``timeout_s`` bounds one request, queueing included.
    """

    url: str
    model: str | None = None
    endpoint: str = "chat"
    temperature: float = 0.0
    timeout_s: float = 3600.0

    def __post_init__(self) -> None:
        if not self.url.startswith(("http://", "https://")):
            raise ValueError(f"url must start with http:// or https://, got {self.url!r}")
        if self.endpoint not in ENDPOINTS:
            raise ValueError(f"endpoint must be one of {list(ENDPOINTS)}, got {self.endpoint!r}")
        if not self.timeout_s > 0:
            raise ValueError(f"timeout_s must be > 0, got {self.timeout_s}")
        object.__setattr__(self, "url", self.url.rstrip("/"))


@dataclass(frozen=True)
class Outcome:
    """What one request got, in seconds from the start of the run.

    ``ok`` means a complete stream with exactly ``expected_tokens`` tokens; anything else
    (an HTTP error, a broken stream, a wrong token count) is counted as lost, with ``error``.
    """

    id: str
    arrival: float
    expected_tokens: int
    ok: bool
    first_token: float | None = None
    finish: float | None = None
    output_tokens: int | None = None
    prompt_tokens: int | None = None
    error: str | None = None

    def record(self) -> RequestRecord:
        assert self.ok and self.first_token is not None and self.finish is not None
        return RequestRecord(
            id=self.id,
            arrival=self.arrival,
            first_token=self.first_token,
            finish=self.finish,
            output_tokens=self.output_tokens or self.expected_tokens,
            prompt_tokens=self.prompt_tokens or 0,
        )


def check_requests(requests: Sequence[Request]) -> None:
    """Refuse what a replay cannot send, naming the requests."""
    if not requests:
        raise ValueError("no requests to send; pick a trace and --burst/--rate with N >= 1")
    ids = [r.id for r in requests]
    if len(set(ids)) != len(ids):
        dup = next(i for i in ids if ids.count(i) > 1)
        raise ValueError(f"request id {dup!r} appears twice; ids must be unique")
    no_text = [r.id for r in requests if not r.prompt]
    if no_text:
        raise ValueError(
            f"{len(no_text)} requests carry no prompt text (first: {no_text[:3]}); a server "
            f"needs text: use a prompt trace (e.g. sharegpt) with --lengths"
        )
    no_len = [r.id for r in requests if r.output_tokens is None]
    if no_len:
        raise ValueError(
            f"{len(no_len)} requests have no recorded output length (first: {no_len[:3]}); "
            f"pass --lengths FILE (e.g. traces/sharegpt-smollm2.jsonl)"
        )


def request_body(request: Request, cfg: LoadConfig, model: str) -> dict[str, Any]:
    """The JSON body that asks for exactly ``request.output_tokens`` streamed tokens."""
    body: dict[str, Any] = {
        "model": model,
        "max_tokens": request.output_tokens,
        # vLLM's extensions: run to max_tokens, and count usage in the last chunk.
        "ignore_eos": True,
        "temperature": cfg.temperature,
        "stream": True,
        "stream_options": {"include_usage": True},
    }
    if cfg.endpoint == "chat":
        body["messages"] = [{"role": "user", "content": request.prompt}]
    else:
        body["prompt"] = request.prompt
    return body


def _has_token(chunk: dict) -> bool:
    for choice in chunk.get("choices") or ():
        piece = (
            choice.get("text") if "text" in choice else (choice.get("delta") or {}).get("content")
        )
        if piece:
            return True
    return False


async def _send(session, cfg: LoadConfig, model: str, request: Request, t0: float) -> Outcome:
    import aiohttp

    loop = asyncio.get_running_loop()
    delay = t0 + request.arrival - loop.time()
    if delay > 0:
        await asyncio.sleep(delay)
    expected = int(request.output_tokens or 0)
    base = {"id": request.id, "arrival": request.arrival, "expected_tokens": expected}
    first = None
    usage: dict = {}
    done = False
    try:
        async with session.post(
            cfg.url + ENDPOINTS[cfg.endpoint],
            json=request_body(request, cfg, model),
            timeout=aiohttp.ClientTimeout(total=cfg.timeout_s),
        ) as resp:
            if resp.status != 200:
                text = (await resp.text())[:300]
                return Outcome(**base, ok=False, error=f"HTTP {resp.status}: {text}")
            async for raw in resp.content:
                line = raw.strip()
                if not line.startswith(b"data:"):
                    continue
                data = line[5:].strip()
                if data == b"[DONE]":
                    done = True
                    break
                chunk = json.loads(data)
                if "error" in chunk:
                    return Outcome(**base, ok=False, error=f"stream error: {chunk['error']}")
                if first is None and _has_token(chunk):
                    first = loop.time() - t0
                usage = chunk.get("usage") or usage
    except (TimeoutError, aiohttp.ClientError, json.JSONDecodeError) as e:
        return Outcome(**base, ok=False, error=f"{type(e).__name__}: {e}")
    finish = loop.time() - t0
    got = usage.get("completion_tokens")
    out = {"first_token": first, "finish": finish, "output_tokens": got}
    out["prompt_tokens"] = usage.get("prompt_tokens")
    if not done:
        return Outcome(**base, ok=False, error="stream ended without [DONE]", **out)
    if got != expected:
        return Outcome(**base, ok=False, error=f"got {got} tokens, asked for {expected}", **out)
    if first is None:
        return Outcome(**base, ok=False, error="no token text in the stream", **out)
    return Outcome(**base, ok=True, **out)


async def _get_json(session, url: str) -> Any:
    async with session.get(url) as resp:
        resp.raise_for_status()
        return await resp.json()


async def _get_text(session, url: str) -> str | None:
    try:
        async with session.get(url) as resp:
            return await resp.text() if resp.status == 200 else None
    except Exception:
        return None


def preemptions_from_metrics(text: str | None) -> float | None:
    """vLLM's ``vllm:num_preemptions_total`` summed over its label sets (Prometheus text)."""
    if not text:
        return None
    total, seen = 0.0, False
    for line in text.splitlines():
        if line.startswith("vllm:num_preemptions_total"):
            total += float(line.rsplit(" ", 1)[1])
            seen = True
    return total if seen else None


async def replay(requests: Sequence[Request], cfg: LoadConfig, *, progress: bool = True) -> dict:
    """Send every request at its arrival time; return outcomes and server facts."""
    import aiohttp

    check_requests(requests)
    # No connection cap: a burst must reach the server at once, as the trace says.
    connector = aiohttp.TCPConnector(limit=0)
    async with aiohttp.ClientSession(connector=connector) as session:
        try:
            models = await _get_json(session, cfg.url + "/v1/models")
        except aiohttp.ClientError as e:
            raise ValueError(f"no OpenAI-compatible server at {cfg.url} ({e})") from None
        names = [m["id"] for m in models.get("data", [])]
        model = cfg.model or (names[0] if names else None)
        if model is None or model not in names:
            raise ValueError(f"model {model!r} is not served at {cfg.url}; it serves {names}")
        version = await _get_text(session, cfg.url + "/version")
        before = preemptions_from_metrics(await _get_text(session, cfg.url + "/metrics"))
        loop = asyncio.get_running_loop()
        t0 = loop.time() + 0.05
        wall0 = time.time()
        tasks = [asyncio.create_task(_send(session, cfg, model, r, t0)) for r in requests]
        bar = None
        if progress:
            from tqdm.auto import tqdm

            bar = tqdm(total=len(tasks), desc="requests", unit="req")
        outcomes: list[Outcome] = []
        for fut in asyncio.as_completed(tasks):
            outcomes.append(await fut)
            if bar is not None:
                bar.update()
        if bar is not None:
            bar.close()
        after = preemptions_from_metrics(await _get_text(session, cfg.url + "/metrics"))
    order = {r.id: i for i, r in enumerate(requests)}
    outcomes.sort(key=lambda o: order[o.id])
    preempted = None if before is None or after is None else after - before
    return {
        "model": model,
        "server_version": json.loads(version).get("version") if version else None,
        "started": wall0,
        "outcomes": outcomes,
        "preemptions": preempted,
    }


def run_load(requests: Sequence[Request], cfg: LoadConfig, *, progress: bool = True) -> dict:
    """:func:`replay`, run to completion, summarized: one JSON-ready report."""
    raw = asyncio.run(replay(requests, cfg, progress=progress))
    outcomes: list[Outcome] = raw.pop("outcomes")
    ok = [o for o in outcomes if o.ok]
    lost = [o for o in outcomes if not o.ok]
    metrics = summarize([o.record() for o in ok]).to_dict() if ok else None
    if metrics is not None:
        metrics["preemptions"] = raw["preemptions"]
    return {
        "url": cfg.url,
        **raw,
        "requests": len(outcomes),
        "finished": len(ok),
        "lost": len(lost),
        "errors": [{"id": o.id, "error": o.error} for o in lost[:20]],
        "metrics": _finite(metrics),
        "per_request": [asdict(o) for o in outcomes],
    }


def _finite(obj):
    """JSON has no NaN: empty summaries become ``None``."""
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, float) and not math.isfinite(obj):
        return None
    return obj
