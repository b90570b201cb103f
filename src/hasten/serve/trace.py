"""Request traces on disk: ShareGPT prompts, Azure arrival CSVs, saved JSONL, recorded lengths."""

from __future__ import annotations

import csv
import dataclasses
import json
import os
from collections.abc import Iterator, Mapping, Sequence
from datetime import datetime
from pathlib import Path
from typing import Any, Literal

import numpy as np

from hasten.serve.request import Request

#: What :func:`load_trace` reads, by format name: (extension, what the rows look like).
FORMATS: dict[str, str] = {
    "sharegpt-json": '.json array of {"id", "conversations": [{"from", "value"}]}',
    "prompts-jsonl": '.jsonl rows with "id" and "prompt" (e.g. sharegpt_prompts.jsonl)',
    "requests-jsonl": '.jsonl rows of Request fields with "arrival" (what save_jsonl writes)',
    "azure-csv": ".csv with TIMESTAMP, ContextTokens, GeneratedTokens (Azure LLM trace 2023)",
}

#: Traces of the shared data folder that :func:`load_trace` knows by name.
NAMED_TRACES: dict[str, str] = {
    "sharegpt": "sharegpt/sharegpt_prompts.jsonl",
    "sharegpt-sample50": "sharegpt/sharegpt_sample50.jsonl",
    "azure-conv": "azure_llm_2023/AzureLLMInferenceTrace_conv.csv",
    "azure-code": "azure_llm_2023/AzureLLMInferenceTrace_code.csv",
}

#: ``{request id: {sample index: (prompt_tokens, output_tokens)}}`` from a generated trace.
Lengths = dict[str, dict[int, tuple[int, int]]]

_REQUEST_FIELDS = tuple(f.name for f in dataclasses.fields(Request))
_AZURE_COLUMNS = ("TIMESTAMP", "ContextTokens", "GeneratedTokens")


# ---- locating traces ------------------------------------------------------------------
def data_dir() -> Path:
    """The shared data folder: ``$HASTEN_DATA``, else ``shared/data`` beside or inside the repo."""
    if os.environ.get("HASTEN_DATA"):
        return Path(os.environ["HASTEN_DATA"])
    repo = Path(__file__).resolve().parents[3]
    for candidate in (repo.parent / "shared" / "data", repo / "shared" / "data"):
        if candidate.is_dir():
            return candidate
    raise FileNotFoundError(
        f"no shared data folder beside or inside {repo}; set HASTEN_DATA to the folder "
        f"that holds {sorted(set(p.split('/')[0] for p in NAMED_TRACES.values()))}"
    )


def _resolve(path_or_name: str | os.PathLike) -> Path:
    path = Path(path_or_name)
    if path.exists():
        return path
    if str(path_or_name) in NAMED_TRACES:
        return data_dir() / NAMED_TRACES[str(path_or_name)]
    raise ValueError(
        f"{str(path_or_name)!r} is neither an existing file nor a named trace; "
        f"named traces: {sorted(NAMED_TRACES)}"
    )


def _unsupported(path: Path, why: str) -> ValueError:
    formats = "; ".join(f"{name}: {what}" for name, what in FORMATS.items())
    return ValueError(f"cannot load {path}: {why}. Supported formats: {formats}")


def detect_format(path: str | os.PathLike) -> str:
    """The :data:`FORMATS` name of ``path``, from its extension and its first record."""
    path = Path(path)
    ext = path.suffix.lower()
    if ext == ".csv":
        with path.open(newline="", encoding="utf-8") as f:
            header = next(csv.reader(f), [])
        if all(c in header for c in _AZURE_COLUMNS):
            return "azure-csv"
        raise _unsupported(path, f"CSV header {header} lacks one of {list(_AZURE_COLUMNS)}")
    if ext == ".json":
        return "sharegpt-json"
    if ext == ".jsonl":
        first = next(_jsonl_rows(path), None)
        if first is None:
            raise _unsupported(path, "the file holds no records")
        _, rec = first
        if "sample" in rec:
            # A file of recorded lengths carries no prompts: it is joined onto a trace.
            raise _unsupported(
                path,
                "its rows carry a 'sample' field, i.e. recorded lengths; "
                "use join_lengths(load_trace(prompts), path) instead",
            )
        if "arrival" in rec:
            return "requests-jsonl"
        if "prompt" in rec:
            return "prompts-jsonl"
        raise _unsupported(path, f"its first record has keys {sorted(rec)}")
    raise _unsupported(path, f"unknown extension {ext!r}")


def load_trace(path_or_name: str | os.PathLike) -> list[Request]:
    """Load a trace file or a named trace (:data:`NAMED_TRACES`) as requests in file order."""
    path = _resolve(path_or_name)
    loader = {
        "sharegpt-json": load_sharegpt_json,
        "prompts-jsonl": load_jsonl,
        "requests-jsonl": load_jsonl,
        "azure-csv": load_azure_csv,
    }[detect_format(path)]
    return loader(path)


# ---- ShareGPT -------------------------------------------------------------------------
def _first_human_turn(item: Mapping[str, Any]) -> str | None:
    for turn in item.get("conversations") or ():
        if turn.get("from") == "human":
            return turn.get("value")
    return None


def _sharegpt_item(item: Mapping[str, Any], id_prefix: str) -> Request | None:
    """One ShareGPT conversation as a request, or ``None`` when it opens with no user prompt."""
    raw_id = item.get("id", item.get("conversation_id"))
    if not raw_id:
        raise ValueError(f"item has no 'id' or 'conversation_id' (keys {sorted(item)})")
    # Some dumps (sharegpt_sample.json) carry the prompt beside the conversation.
    prompt = item.get("prompt") or _first_human_turn(item)
    if not prompt or not prompt.strip():
        return None
    output = item.get("output_tokens", item.get("response_tokens"))
    return Request(
        id=f"{id_prefix}{raw_id}",
        prompt=prompt,
        prompt_tokens=item.get("prompt_tokens", 0),
        output_tokens=output,
    )


def load_sharegpt_json(
    path: str | os.PathLike, *, id_prefix: str = "sharegpt-", strict: bool = False
) -> list[Request]:
    """Load a ShareGPT JSON array; the first human turn of each conversation is the prompt.

    Ids get ``id_prefix`` (``"sharegpt-"`` matches ``sharegpt_prompts.jsonl``, so lengths
    recorded for one join onto the other). Conversations with no human turn or an empty
    one (ShareGPT dumps have both) are skipped, or raise with ``strict=True``. Token counts
    (``prompt_tokens``, ``response_tokens`` -> ``output_tokens``) are kept where present;
    they are the dump's own counts, not the serving model's.
    """
    path = Path(path)
    with path.open(encoding="utf-8") as f:
        items = json.load(f)
    if not isinstance(items, list):
        raise _unsupported(path, f"top level is a JSON {type(items).__name__}, not an array")
    requests = []
    for i, item in enumerate(items):
        try:
            req = _sharegpt_item(item, id_prefix)
        except (ValueError, TypeError, AttributeError) as e:
            raise ValueError(f"{path}: item {i}: {e}") from None
        if req is None and strict:
            raise ValueError(
                f"{path}: item {i} ({item.get('id')!r}) has no non-empty human turn; "
                f"pass strict=False to skip such items"
            )
        if req is not None:
            requests.append(req)
    return _check_unique(requests, path)


# ---- JSONL ----------------------------------------------------------------------------
def _jsonl_rows(path: Path) -> Iterator[tuple[int, dict]]:
    """``(line number, record)`` for each non-blank line."""
    with path.open(encoding="utf-8") as f:
        for lineno, line in enumerate(f, 1):
            if not line.strip():
                continue
            try:
                rec = json.loads(line)
            except json.JSONDecodeError as e:
                raise ValueError(f"{path}:{lineno}: not JSON ({e})") from None
            if not isinstance(rec, dict):
                raise ValueError(f"{path}:{lineno}: a row must be a JSON object, got {rec!r:.60}")
            yield lineno, rec


def _request_row(rec: dict) -> Request:
    unknown = sorted(set(rec) - set(_REQUEST_FIELDS))
    if unknown:
        raise ValueError(f"unknown fields {unknown}; a request row has {list(_REQUEST_FIELDS)}")
    rec = dict(rec, arrival=float(rec.get("arrival", 0.0)))
    if rec.get("prompt_token_ids") is not None:
        rec["prompt_token_ids"] = tuple(rec["prompt_token_ids"])
    return Request(**rec)


def _prompt_row(rec: dict) -> Request:
    if not rec.get("id"):
        raise ValueError(f"row has no 'id' (keys {sorted(rec)})")
    if "arrival" in rec:
        raise ValueError("row has an 'arrival' but the first row did not; mixed kinds of rows")
    if not isinstance(rec.get("prompt"), str) or not rec["prompt"]:
        raise ValueError(f"request {rec['id']!r}: prompt must be a non-empty string")
    return Request(
        id=str(rec["id"]),
        prompt=rec["prompt"],
        prompt_tokens=rec.get("prompt_tokens", 0),
        output_tokens=rec.get("output_tokens", rec.get("response_tokens")),
    )


def load_jsonl(path: str | os.PathLike) -> list[Request]:
    """Load a JSONL trace: request rows (with ``arrival``) or prompt rows (with ``prompt``).

    Request rows must hold only :class:`Request` fields. Prompt rows may hold anything
    else (``reference_response``, ``source``, ...); their ``prompt_tokens`` and
    ``output_tokens`` (or ``response_tokens``, as in ``sharegpt_sample50.jsonl``) are kept
    where present. Every row must be of the first row's kind.
    """
    path = Path(path)
    fmt = detect_format(path)
    if fmt not in ("requests-jsonl", "prompts-jsonl"):
        raise _unsupported(path, f"it is {fmt}, not JSONL")
    parse = _request_row if fmt == "requests-jsonl" else _prompt_row
    requests = []
    for lineno, rec in _jsonl_rows(path):
        try:
            requests.append(parse(rec))
        except (ValueError, TypeError) as e:
            raise ValueError(f"{path}:{lineno}: {e}") from None
    return _check_unique(requests, path)


def save_jsonl(requests: Sequence[Request], path: str | os.PathLike) -> None:
    """Write requests as JSONL rows that :func:`load_trace` reads back equal."""
    with Path(path).open("w", encoding="utf-8") as f:
        for r in requests:
            row = {name: getattr(r, name) for name in _REQUEST_FIELDS}
            if row["prompt_token_ids"] is None:
                del row["prompt_token_ids"]
            else:
                row["prompt_token_ids"] = list(row["prompt_token_ids"])
            # Floats print as repr, which reads back bit-exact.
            f.write(json.dumps(row, ensure_ascii=False) + "\n")


# ---- Azure ----------------------------------------------------------------------------
def load_azure_csv(path: str | os.PathLike, *, name: str | None = None) -> list[Request]:
    """Load an Azure LLM inference trace: arrivals and token counts, no prompt text.

    ``arrival`` is seconds from the earliest TIMESTAMP (the first row: the files are sorted),
    at microsecond resolution (the files' seventh digit is dropped). Ids are
    ``azure-<name>-<row:06d>``; ``name`` defaults to the file name's last ``_`` part
    (``AzureLLMInferenceTrace_conv.csv`` -> ``conv``).
    """
    path = Path(path)
    if detect_format(path) != "azure-csv":
        raise _unsupported(path, "it is not an Azure CSV")
    name = name or path.stem.rsplit("_", 1)[-1].lower()
    with path.open(newline="", encoding="utf-8") as f:
        rows = list(csv.DictReader(f))
    if not rows:
        raise ValueError(f"{path}: the trace has a header but no rows")
    try:
        stamps = [datetime.fromisoformat(r["TIMESTAMP"]) for r in rows]
    except ValueError as e:
        raise ValueError(f"{path}: TIMESTAMP is not 'YYYY-MM-DD HH:MM:SS.fffffff' ({e})") from None
    t0 = min(stamps)
    requests = []
    for i, (row, t) in enumerate(zip(rows, stamps, strict=True)):
        try:
            requests.append(
                Request(
                    id=f"azure-{name}-{i:06d}",
                    arrival=(t - t0).total_seconds(),
                    prompt_tokens=int(row["ContextTokens"]),
                    output_tokens=int(row["GeneratedTokens"]),
                )
            )
        except ValueError as e:
            # Row i is line i + 2 of the file (after the header).
            raise ValueError(f"{path}:{i + 2}: {e}") from None
    return requests


# ---- recorded lengths -----------------------------------------------------------------
def _count(rec: dict, key: str, least: int) -> int:
    value = rec.get(key)
    if not isinstance(value, int) or isinstance(value, bool) or value < least:
        raise ValueError(f"{key} must be an int >= {least}, got {value!r}")
    return value


def load_reference_trace(path: str | os.PathLike) -> Lengths:
    """Read recorded lengths: JSONL rows ``id, sample, prompt_tokens, output_tokens``.

    ``sample`` numbers the responses generated for one prompt (0 = the first). Other
    fields (text, sampling settings) are ignored. A repeated ``(id, sample)`` is an error.
    """
    path = Path(path)
    lengths: Lengths = {}
    for lineno, rec in _jsonl_rows(path):
        try:
            if not rec.get("id"):
                raise ValueError(f"row has no 'id' (keys {sorted(rec)})")
            rid, sample = str(rec["id"]), _count(rec, "sample", 0)
            pair = (_count(rec, "prompt_tokens", 0), _count(rec, "output_tokens", 1))
        except ValueError as e:
            raise ValueError(f"{path}:{lineno}: {e}") from None
        per_id = lengths.setdefault(rid, {})
        if sample in per_id:
            raise ValueError(f"{path}:{lineno}: id {rid!r} has sample {sample} twice")
        per_id[sample] = pair
    return lengths


def join_lengths(
    requests: Sequence[Request],
    lengths: str | os.PathLike | Mapping[str, Mapping[int, tuple[int, int]]],
    *,
    sample: int = 0,
    missing: Literal["raise", "drop"] = "raise",
) -> list[Request]:
    """Give each request the prompt and output lengths recorded for its id and ``sample``.

    ``lengths`` is a file for :func:`load_reference_trace` or what it returns. Recorded
    lengths replace the requests' own (they are the serving model's tokens). Requests with
    no such record raise, or are left out with ``missing="drop"``.
    """
    if missing not in ("raise", "drop"):
        raise ValueError(f"missing must be 'raise' or 'drop', got {missing!r}")
    source = "the given lengths"
    if isinstance(lengths, (str, os.PathLike)):
        source, lengths = str(lengths), load_reference_trace(lengths)
    joined, absent = [], []
    for r in requests:
        pair = lengths.get(r.id, {}).get(sample)
        if pair is None:
            absent.append(r.id)
            continue
        joined.append(dataclasses.replace(r, prompt_tokens=pair[0], output_tokens=pair[1]))
    if absent and missing == "raise":
        raise ValueError(
            f"{len(absent)} of {len(requests)} requests have no sample {sample} in {source} "
            f"(first: {absent[:3]}); pass missing='drop' to keep only those that do"
        )
    return joined


# ---- selecting ------------------------------------------------------------------------
def take(requests: Sequence[Request], n: int, *, seed: int | None = None) -> list[Request]:
    """``n`` requests: the first ``n``, or with ``seed`` a uniform sample kept in trace order."""
    if not 0 <= n <= len(requests):
        raise ValueError(f"cannot take {n} requests from a trace of {len(requests)}")
    if seed is None:
        return list(requests[:n])
    picked = np.sort(np.random.default_rng(seed).choice(len(requests), size=n, replace=False))
    return [requests[i] for i in picked]


def _check_unique(requests: list[Request], path: Path) -> list[Request]:
    seen: set[str] = set()
    for r in requests:
        if r.id in seen:
            # Lengths are joined by id, so a repeated id would make the join ambiguous.
            raise ValueError(f"{path}: request id {r.id!r} appears more than once")
        seen.add(r.id)
    return requests
