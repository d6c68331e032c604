"""flipserve's HTTP surface on KServe's FastAPI app: routes, limits, headers, error mapping.

KServe registers its v1/v2 routes when its REST server starts; the routes
here are added to the same app first, so flipserve's readiness probe and v2
model metadata take precedence over KServe's. One ASGI middleware enforces
the body size limit (413), stamps ``X-Model-Version``/``X-Model-Colour`` on
every response, turns anything unexpected into a JSON 500 that still carries
them, and records request metrics. Domain errors map to HTTP codes here, and
only here.
"""

from __future__ import annotations

import asyncio
import hmac
import logging
import time
from collections.abc import Awaitable, Callable, MutableMapping
from http import HTTPStatus
from typing import Annotated, Any

from fastapi import APIRouter, Depends, FastAPI, Query, Request
from fastapi.openapi.utils import get_openapi
from fastapi.responses import JSONResponse
from fastapi.security import HTTPAuthorizationCredentials, HTTPBearer
from kserve.errors import ModelNotFound
from pydantic import BaseModel, ConfigDict, Field
from starlette.datastructures import MutableHeaders

from flipserve.errors import (
    FlipserveError,
    InvalidInputError,
    ModelNotReadyError,
    PayloadTooLargeError,
    UnauthorizedError,
)
from flipserve.server import telemetry
from flipserve.server.model import FlipserveModel

log = logging.getLogger(__name__)

Scope = MutableMapping[str, Any]
Message = MutableMapping[str, Any]
Receive = Callable[[], Awaitable[Message]]
Send = Callable[[Message], Awaitable[None]]
ASGIApp = Callable[[Scope, Receive, Send], Awaitable[None]]

STATUS_FOR: list[tuple[type[FlipserveError], int]] = [
    (PayloadTooLargeError, 413),
    (InvalidInputError, 400),
    (UnauthorizedError, 401),
    (ModelNotReadyError, 503),
]


# --- request and response bodies ------------------------------------------------


class PredictRequest(BaseModel):
    """One text, or a list of texts; exactly one of the two."""

    model_config = ConfigDict(extra="forbid")
    text: str | None = Field(default=None, examples=["what a lovely day"])
    texts: list[str] | None = Field(default=None, examples=[["great", "awful"]])


class Prediction(BaseModel):
    label: str
    scores: dict[str, float]
    truncated: bool = Field(description="the text was longer than the model's max length and cut")


class PredictResponse(BaseModel):
    predictions: list[Prediction]
    model: str
    version: str
    colour: str


class DriftStatus(BaseModel):
    drift: bool
    p_value: float | None
    threshold: float
    window: int
    backend: str | None
    tested_samples: int
    seen_samples: int
    tested_at: float | None


class DriftTestRequest(BaseModel):
    model_config = ConfigDict(extra="forbid")
    texts: list[str] = Field(examples=[["great", "awful"]])


class DriftTestResult(BaseModel):
    drift: bool
    p_value: float
    threshold: float
    n: int
    backend: str


class FeedbackExample(BaseModel):
    model_config = ConfigDict(extra="forbid")
    text: str
    label: str


class FeedbackResponse(BaseModel):
    accepted: int


class TrafficSample(BaseModel):
    texts: list[str]


class ErrorBody(BaseModel):
    error: str


ERRORS: dict[int | str, dict[str, Any]] = {
    code: {"model": ErrorBody} for code in (400, 401, 413, 503)
}


# --- routes -----------------------------------------------------------------------

_bearer = HTTPBearer(auto_error=False, description="the server's FLIPSERVE_API_TOKEN")
Credentials = Annotated[HTTPAuthorizationCredentials | None, Depends(_bearer)]


def build_router(model: FlipserveModel) -> APIRouter:
    """flipserve's own routes, bound to ``model``."""
    router = APIRouter(tags=["flipserve"], responses=ERRORS)

    def authorize(credentials: HTTPAuthorizationCredentials | None) -> None:
        token = model.settings.api_token
        if token is None:
            raise UnauthorizedError("no API token is configured on this server")
        given = credentials.credentials if credentials else ""
        if not hmac.compare_digest(given.encode(), token.get_secret_value().encode()):
            raise UnauthorizedError("missing or wrong bearer token")

    @router.post("/predict", response_model=PredictResponse)
    async def predict(body: PredictRequest) -> JSONResponse:
        """Label and per-label scores for ``text`` or each of ``texts``."""
        if (body.text is None) == (body.texts is None):
            raise InvalidInputError('give exactly one of "text" or "texts"')
        texts = [body.text] if body.text is not None else body.texts or []
        predictions = await model.classify(texts)
        # The hot path: ``classify`` already returns exactly PredictResponse's
        # shape (the fuzz test checks answers against the schema), so skip
        # building and re-validating pydantic objects per request.
        content = {
            "predictions": predictions,
            "model": model.name,
            "version": model.version,
            "colour": model.colour,
        }
        return JSONResponse(content)

    @router.get("/drift", response_model=DriftStatus)
    async def drift() -> dict[str, Any]:
        """The last online drift test of recent traffic against the model's reference sample."""
        return model.monitor.status()

    @router.post("/drift", response_model=DriftTestResult)
    async def drift_test(body: DriftTestRequest) -> DriftTestResult:
        """Test ``texts`` against this model's reference sample (the promotion's drift gate).

        The texts do not count as live traffic: neither the online window nor
        the traffic sample sees them.
        """
        result = await model.drift_test(body.texts)
        return DriftTestResult(
            drift=result.drift,
            p_value=result.p_value,
            threshold=result.threshold,
            n=result.n,
            backend=result.backend,
        )

    @router.post("/feedback", response_model=FeedbackResponse)
    async def feedback(
        body: FeedbackExample | list[FeedbackExample], credentials: Credentials
    ) -> FeedbackResponse:
        """Store labelled examples for the next dataset version (bearer token)."""
        authorize(credentials)
        examples = [e.model_dump() for e in (body if isinstance(body, list) else [body])]
        await asyncio.to_thread(model.submit_feedback, examples)
        return FeedbackResponse(accepted=len(examples))

    @router.get("/traffic/sample", response_model=TrafficSample)
    async def traffic_sample(
        credentials: Credentials, n: Annotated[int, Query(ge=1, le=100_000)] = 200
    ) -> TrafficSample:
        """The most recent ``n`` input texts (bearer token); the promotion's drift gate reads it."""
        authorize(credentials)
        texts = list(model.traffic)
        return TrafficSample(texts=texts[-n:])

    @router.get("/v2/health/ready", tags=["V2"])
    async def ready() -> JSONResponse:
        """Readiness: 200 once the model is loaded from a READY volume, 503 before."""
        if model.ready:
            return JSONResponse({"ready": True})
        return JSONResponse({"ready": False, "error": model.not_ready_reason}, status_code=503)

    @router.get("/v2/models/{model_name}", tags=["V2"])
    async def model_metadata(model_name: str) -> dict[str, Any]:
        """Open Inference Protocol model metadata with version, colour and digest."""
        if model_name != model.name:
            raise ModelNotFound(model_name)
        return model.metadata()

    return router


# --- errors -----------------------------------------------------------------------


def status_for(error: FlipserveError) -> int:
    for kind, code in STATUS_FOR:
        if isinstance(error, kind):
            return code
    return 500


async def flipserve_error_handler(request: Request, error: Exception) -> JSONResponse:
    code = status_for(error) if isinstance(error, FlipserveError) else 500
    headers = {"WWW-Authenticate": "Bearer"} if code == 401 else None
    return JSONResponse({"error": str(error)}, status_code=code, headers=headers)


async def not_supported_handler(request: Request, error: Exception) -> JSONResponse:
    return JSONResponse({"error": f"not supported: {error}"}, status_code=400)


# --- middleware -------------------------------------------------------------------


class ServingMiddleware:
    """Body limit, model headers, last-resort JSON 500, request metrics."""

    def __init__(self, app: ASGIApp, model: FlipserveModel, max_body_bytes: int) -> None:
        self.app = app
        self.model = model
        self.max_body_bytes = max_body_bytes

    async def __call__(self, scope: Scope, receive: Receive, send: Send) -> None:
        if scope["type"] != "http":
            await self.app(scope, receive, send)
            return
        started, status = time.perf_counter(), [0]

        async def send_with_headers(message: Message) -> None:
            if message["type"] == "http.response.start":
                status[0] = message["status"]
                headers = MutableHeaders(scope=message)
                headers["X-Model-Version"] = self.model.version
                headers["X-Model-Colour"] = self.model.colour
            await send(message)

        try:
            replay = await self._read_body(scope, receive)
            if isinstance(replay, JSONResponse):
                await replay(scope, receive, send_with_headers)
            else:
                await self.app(scope, replay, send_with_headers)
        except Exception:
            log.exception("unhandled error on %s", scope.get("path"))
            if not status[0]:
                error = JSONResponse({"error": "internal error"}, status_code=500)
                await error(scope, receive, send_with_headers)
        finally:
            self._record(scope, status[0] or 500, time.perf_counter() - started)

    async def _read_body(self, scope: Scope, receive: Receive) -> Receive | JSONResponse:
        """The whole body (up to the limit) behind a replaying ``receive``, or a 413/400."""
        length = dict(scope["headers"]).get(b"content-length")
        try:
            declared = int(length) if length is not None else 0
        except ValueError:
            return JSONResponse({"error": "bad Content-Length"}, status_code=400)
        if declared > self.max_body_bytes:
            return _too_large(self.max_body_bytes)
        chunks, size, more = [], 0, True
        while more:
            message = await receive()
            if message["type"] != "http.request":
                break
            chunks.append(message.get("body", b""))
            size += len(chunks[-1])
            more = message.get("more_body", False)
            if size > self.max_body_bytes:
                return _too_large(self.max_body_bytes)
        body, sent = b"".join(chunks), [False]

        async def replay() -> Message:
            if not sent[0]:
                sent[0] = True
                return {"type": "http.request", "body": body, "more_body": False}
            return await receive()

        return replay

    @staticmethod
    def _record(scope: Scope, status: int, seconds: float) -> None:
        route = scope.get("route")
        endpoint = getattr(route, "path", None) or "unmatched"
        labels = {"endpoint": endpoint, "status": str(status)}
        telemetry.REQUESTS.labels(**labels).inc()
        telemetry.LATENCY.labels(**labels).observe(seconds)


def _too_large(limit: int) -> JSONResponse:
    return JSONResponse(
        {"error": f"request body over {limit} bytes"},
        status_code=HTTPStatus.REQUEST_ENTITY_TOO_LARGE,
    )


# KServe routes flipserve does not serve: explain, model versions, repository
# load/unload. Shadowed by a 404 (flipserve's routes match first) and left out
# of the OpenAPI document.
UNSERVED = (
    "/v1/models/{model_name}:explain",
    "/v2/models/{model_name}/versions/{model_version}",
    "/v2/models/{model_name}/versions/{model_version}/ready",
    "/v2/models/{model_name}/versions/{model_version}/infer",
    "/v2/repository/models/{model_name}/load",
    "/v2/repository/models/{model_name}/unload",
)


async def _not_served() -> JSONResponse:
    return JSONResponse({"error": "not served by flipserve"}, status_code=404)


def _openapi(app: FastAPI) -> Callable[[], dict[str, Any]]:
    def openapi() -> dict[str, Any]:
        if app.openapi_schema is None:
            schema = get_openapi(
                title=app.title, version=app.version, description=app.description, routes=app.routes
            )
            for path in UNSERVED:
                schema["paths"].pop(path, None)
            app.openapi_schema = schema
        return app.openapi_schema

    return openapi


def install(app: FastAPI, model: FlipserveModel) -> None:
    """Put flipserve's routes, middleware and error mapping on KServe's app (before it starts)."""
    app.title = "flipserve model server"
    app.description = (
        "KServe v1 and Open Inference Protocol v2 plus flipserve's /predict, /drift, "
        "/feedback and /traffic/sample. Every response carries X-Model-Version and "
        "X-Model-Colour."
    )
    app.include_router(build_router(model))
    for path in UNSERVED:
        app.add_api_route(path, _not_served, methods=["GET", "POST"], include_in_schema=False)
    app.openapi = _openapi(app)  # type: ignore[method-assign]
    app.add_exception_handler(FlipserveError, flipserve_error_handler)
    app.add_middleware(
        ServingMiddleware,
        model=model,
        max_body_bytes=model.settings.max_body_bytes,
    )
