"""The HTTP API, on FastAPI (Starlette + pydantic): routes, an OpenAPI schema at /openapi.json
(browsable at /docs), and every error as one line, {"error": "..."}, with a 4xx status naming
the record index and field. Request bodies are read and checked here, on the event loop; the
model runs only on the scoring thread, fed through the `MicroBatcher`."""

from __future__ import annotations

import asyncio
import json
import logging
import sys
import time
import traceback
from importlib import resources
from typing import Any

from fastapi import FastAPI, Request
from fastapi.responses import HTMLResponse, JSONResponse
from pydantic import BaseModel, Field
from starlette.exceptions import HTTPException
from starlette.requests import ClientDisconnect
from starlette.responses import Response

from mlx_rsg import tasks
from mlx_rsg.bench.measure import rss_peak_bytes
from mlx_rsg.errors import UserError
from mlx_rsg.serve.batcher import Job, MicroBatcher
from mlx_rsg.serve.config import ServeConfig
from mlx_rsg.serve.runs import ServedRun
from mlx_rsg.version import __version__


class ApiError(Exception):
    def __init__(self, status: int, message: str):
        super().__init__(message)
        self.status, self.message = status, message


# ------------------------------------------------------------------ schema (for /openapi.json)


class PredictRequest(BaseModel):
    model: str | None = Field(None, description="A served run's name (GET /v1/models); may be "
                              "left out when one run is served.")  # fmt: skip
    task: str = Field(description="One of the nine tasks, any case (TERRa, rcb, LiDiRus, ...).")
    records: list[dict[str, Any]] = Field(description="Records in the task's official JSON "
                                          "format. idx is optional (records are numbered by "
                                          "position); labels are optional.")  # fmt: skip


class Prediction(BaseModel):
    idx: Any = Field(description="The record's idx.")
    label: Any = Field(description="The answer as the official submission spells it (MuSeRC: "
                       "the submission line's passage with a label per answer).")  # fmt: skip
    probs: Any = Field(None, description="Label tasks: {label: p}; MuSeRC: one {0: p, 1: p} per "
                       "answer; PARus, RuCoS: one p per candidate, as in `choices`.")  # fmt: skip
    choices: list[str] | None = Field(None, description="PARus, RuCoS: the candidates.")


class PredictResponse(BaseModel):
    model: str
    task: str
    predictions: list[Prediction]
    ms: float = Field(description="Time in the server: waiting for the batch and scoring it.")


class ServedModel(BaseModel):
    name: str
    path: str
    tasks: list[str]
    method: str | None
    bits: int
    quantization: dict[str, Any] | None
    size_bytes: int


class ModelsResponse(BaseModel):
    models: list[ServedModel]


# --------------------------------------------------------------------------------- the app


def make_app(
    runs: dict[str, ServedRun],
    batcher: MicroBatcher,
    cfg: ServeConfig,
    examples: dict[str, dict[str, Any]],
) -> FastAPI:
    """The server's routes over its runs and batcher: the page and information, /v1/predict,
    and every error as one JSON line."""
    app = FastAPI(title="mlx-rsg", version=__version__,
                  description="Russian SuperGLUE classifiers trained with mlx-rsg.")  # fmt: skip
    app.add_middleware(BodyLimit, max_bytes=cfg.max_body_kb * 1024)
    _error_handlers(app)
    _info_routes(app, runs, batcher, examples)

    body_schema = {"content": {"application/json": {"schema": PredictRequest.model_json_schema()}},
                   "required": True}  # fmt: skip

    @app.post("/v1/predict", response_model=PredictResponse,
              openapi_extra={"requestBody": body_schema})  # fmt: skip
    async def predict(request: Request) -> JSONResponse:
        """Labels and probabilities for records of one task, from one served run. Requests
        arriving together for the same run and task are scored in one batch."""
        t0 = time.perf_counter()
        run, task, records = parse_predict(await request.body(), runs, cfg.max_records)
        if batcher.pending() >= cfg.max_pending:  # shed load rather than queue without end
            raise ApiError(503, f"busy: {batcher.pending()} requests are waiting "
                           "(--max-pending); retry later")  # fmt: skip
        loop = asyncio.get_running_loop()
        answer: asyncio.Future = loop.create_future()

        def done(result: Any) -> None:  # on the scoring thread
            try:
                loop.call_soon_threadsafe(_settle, answer, result)
            except RuntimeError:  # the loop closed: the server is gone
                pass

        units = len(tasks.make_units(task, records))
        batcher.submit(Job(run.name, task, records, units, done))
        result = await answer
        if isinstance(result, UserError):
            raise ApiError(422, str(result))
        if isinstance(result, BaseException):
            traceback.print_exception(type(result), result, result.__traceback__, file=sys.stderr)
            raise ApiError(500, f"internal error: {type(result).__name__}: {result}")
        ms = (time.perf_counter() - t0) * 1e3
        return JSONResponse({"model": run.name, "task": task, "predictions": result,
                             "ms": round(ms, 2)})  # fmt: skip

    return app


def _error_handlers(app: FastAPI) -> None:
    """Every error as one JSON line: ours, FastAPI's, and a client gone mid-body."""

    @app.exception_handler(ApiError)
    async def api_error(request: Request, e: ApiError) -> JSONResponse:
        return JSONResponse({"error": e.message}, status_code=e.status)

    @app.exception_handler(HTTPException)
    async def http_error(request: Request, e: HTTPException) -> JSONResponse:
        what = f"{request.method} {request.url.path}"
        return JSONResponse({"error": f"{what}: {e.detail}"}, status_code=e.status_code)

    @app.exception_handler(ClientDisconnect)
    async def client_gone(request: Request, e: ClientDisconnect) -> Response:
        # nobody is left to answer: one line in the server's log, not an ASGI traceback
        logging.getLogger("uvicorn.error").warning(
            "%s %s: the client disconnected before sending its whole body; dropped",
            request.method, request.url.path)  # fmt: skip
        return Response(status_code=400)


def _info_routes(app: FastAPI, runs: dict[str, ServedRun], batcher: MicroBatcher,
                 examples: dict[str, dict[str, Any]]) -> None:  # fmt: skip
    """The page, /health, the runs served and the example records."""
    page = resources.files("mlx_rsg.serve").joinpath("page.html").read_text(encoding="utf-8")

    @app.get("/", response_class=HTMLResponse, include_in_schema=False)
    async def index() -> HTMLResponse:
        return HTMLResponse(page)

    @app.get("/health")
    async def health() -> dict[str, Any]:
        """Up; the runs served; requests waiting; requests scored so far and the batches they
        took; the process's peak resident memory."""
        return {"status": "ok", "models": list(runs), "pending": batcher.pending(),
                "requests": batcher.jobs, "batches": batcher.batches,
                "rss_peak_bytes": rss_peak_bytes()}  # fmt: skip

    @app.get("/v1/models", response_model=ModelsResponse)
    async def models() -> dict[str, Any]:
        return {"models": [r.description for r in runs.values()]}

    @app.get("/v1/examples")
    async def example_records() -> dict[str, Any]:
        """An example record per task, in the official format (what the page pre-fills)."""
        return examples


def _settle(future: asyncio.Future, result: Any) -> None:
    if not future.done():  # the client may have gone
        future.set_result(result)


# ------------------------------------------------------------------------ request checks


def parse_predict(
    raw: bytes, runs: dict[str, ServedRun], max_records: int
) -> tuple[ServedRun, str, list]:
    """(run, task's official name, parsed records) of a /v1/predict body, or an ApiError whose
    one line names the field, and for a record its index."""
    try:
        text = raw.decode("utf-8")
    except UnicodeDecodeError as e:
        raise ApiError(400, f"body: not UTF-8 (byte {e.start}: {e.reason})") from None
    try:
        obj = json.loads(text)
    except json.JSONDecodeError as e:
        raise ApiError(400, f"body: invalid JSON: {e.msg} (line {e.lineno}, column {e.colno})"
                       ) from None  # fmt: skip
    except RecursionError:
        raise ApiError(400, "body: invalid JSON: nested too deeply") from None
    if not isinstance(obj, dict):
        raise ApiError(422, "body: expected a JSON object with task and records")
    unknown = sorted(set(obj) - {"model", "task", "records"})
    if unknown:
        raise ApiError(422, f"body: unknown field {unknown[0]!r} (expected model, task, records)")
    run = _run(obj.get("model"), runs)
    task = _task(obj.get("task"), run)
    return run, task, _records(obj.get("records"), task, max_records)


def _run(name: Any, runs: dict[str, ServedRun]) -> ServedRun:
    served = ", ".join(runs)
    if name is None:
        if len(runs) == 1:
            return next(iter(runs.values()))
        raise ApiError(422, f"field 'model': missing (this server has {served})")
    if not isinstance(name, str):
        raise ApiError(422, f"field 'model': expected a string, got {type(name).__name__}")
    if name not in runs:
        raise ApiError(404, f"field 'model': {name!r} is not served here ({served})")
    return runs[name]


def _task(name: Any, run: ServedRun) -> str:
    if name is None:
        raise ApiError(422, "field 'task': missing")
    if not isinstance(name, str):
        raise ApiError(422, f"field 'task': expected a string, got {type(name).__name__}")
    task = tasks.official_name(name)
    if task is None:
        raise ApiError(422, f"field 'task': {name!r} is not one of {', '.join(tasks.TASKS)}")
    if task not in run.predictor.tasks:
        raise ApiError(422, f"field 'task': model {run.name!r} was not trained for {task} "
                       f"(its tasks: {', '.join(run.predictor.tasks)})")  # fmt: skip
    return task


def _records(values: Any, task: str, max_records: int) -> list:
    if values is None:
        raise ApiError(422, "field 'records': missing")
    if not isinstance(values, list):
        raise ApiError(422, f"field 'records': expected a list, got {type(values).__name__}")
    if not values:
        raise ApiError(422, "field 'records': empty")
    if len(values) > max_records:
        raise ApiError(413, f"field 'records': {len(values)} records; at most {max_records} "
                       "in one request (--max-records)")  # fmt: skip
    records, seen = [], {}
    for i, obj in enumerate(values):
        where = f"records[{i}]"
        if not isinstance(obj, dict):
            raise ApiError(422, f"{where}: expected a JSON object, got {type(obj).__name__}")
        obj = {**obj, "idx": obj.get("idx", i)}  # records typed by hand: numbered by position
        try:
            parsed = tasks.parse_records(task, obj, where)
        except UserError as e:
            raise ApiError(422, str(e)) from None
        if len(parsed) != 1:
            raise ApiError(422, f"{where}: field 'qas': {len(parsed)} queries; send one record "
                           "per query")  # fmt: skip
        key = json.dumps(parsed[0].idx)
        if key in seen:
            raise ApiError(422, f"{where}: field 'idx': {parsed[0].idx!r} is also "
                           f"records[{seen[key]}]'s")  # fmt: skip
        seen[key] = i
        records.append(parsed[0])
    return records


class BodyLimit:
    """ASGI middleware: a body over `max_bytes` gets a 413, by its Content-Length before it is
    read, or while it streams in. The rest of a refused body is read and dropped first (up to
    `drain_bytes`, for `drain_s`): a client still sending would otherwise find the connection
    reset instead of the 413 (uvicorn closes it with the body unread, as it has no lingering
    close)."""

    def __init__(self, app, max_bytes: int, drain_bytes: int = 64 << 20, drain_s: float = 10.0):
        self.app, self.max_bytes = app, max_bytes
        self.drain_bytes, self.drain_s = drain_bytes, drain_s

    def _message(self) -> str:
        return f"body: larger than {self.max_bytes // 1024} KiB (--max-body-kb)"

    async def _drain(self, receive) -> None:
        async def drop() -> None:
            dropped = 0
            while dropped <= self.drain_bytes:
                message = await receive()
                if message["type"] != "http.request" or not message.get("more_body", False):
                    return
                dropped += len(message.get("body", b""))

        try:
            await asyncio.wait_for(drop(), self.drain_s)
        except asyncio.TimeoutError:  # a client that stops sending: answered all the same
            pass

    async def __call__(self, scope, receive, send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        length = dict(scope["headers"]).get(b"content-length", b"")
        if length.isdigit() and int(length) > self.max_bytes:
            await self._drain(receive)
            await JSONResponse({"error": self._message()}, 413)(scope, receive, send)
            return
        seen = 0

        async def limited() -> dict:
            nonlocal seen
            message = await receive()
            if message["type"] == "http.request":
                seen += len(message.get("body", b""))
                if seen > self.max_bytes:
                    if message.get("more_body", False):
                        await self._drain(receive)
                    raise ApiError(413, self._message())
            return message

        await self.app(scope, limited, send)
