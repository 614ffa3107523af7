"""Operator routes: the demo page, liveness and readiness, model metadata (GET /models, /models/{name}),
Prometheus metrics, the API docs served from an installed package (no CDN), and the KServe v2 / Open Inference
Protocol health and metadata paths (/v2/health/live, /v2/health/ready, /v2/models/{name}[/ready]).

There is no /v2/models/{name}/infer: that protocol sends tensors as JSON, while these models take files (an image,
a recording) that the service decodes and resamples itself; inference stays at POST /classify and /transcribe."""
from __future__ import annotations

from pathlib import Path
from typing import Any

from fastapi import FastAPI, HTTPException
from fastapi.openapi.docs import get_swagger_ui_html
from fastapi.responses import FileResponse, HTMLResponse, JSONResponse, RedirectResponse, Response
from prometheus_client import CONTENT_TYPE_LATEST, generate_latest

from ..responses import error_doc
from ..schemas import ModelInfo, ModelsResponse
from ..state import MODEL_SETTINGS, Service

STATIC_DIR = Path(__file__).resolve().parent.parent / "static"
DOCS_ASSETS = "/docs/assets"  # Swagger UI's files, mounted by create_app from the swagger-ui-bundle-v2 package


def swagger_ui_dir() -> Path | None:
    try:
        import swagger_ui_bundle
    except ImportError:
        return None
    return Path(swagger_ui_bundle.swagger_ui_path)


def add_routes(r: FastAPI, service: Service) -> None:
    not_ready = {503: error_doc("not ready")}
    unknown_model = {404: error_doc("no such model, or not served by this instance"), **not_ready}

    @r.get("/", include_in_schema=False)
    async def index() -> Response:
        page = STATIC_DIR / "index.html"
        if page.is_file():
            return FileResponse(page)
        return HTMLResponse("<h1>Deep Complex Networks</h1><p>API: <a href='/docs'>/docs</a></p>")

    @r.get("/docs", include_in_schema=False)
    async def docs() -> HTMLResponse:
        if swagger_ui_dir() is None:
            return HTMLResponse("<h1>API documentation</h1><p>Swagger UI is not installed here "
                                "(<code>pip install swagger-ui-bundle-v2</code>); the OpenAPI document is at "
                                "<a href='/openapi.json'>/openapi.json</a>.</p>")
        return get_swagger_ui_html(openapi_url="/openapi.json", title="Deep Complex Networks - API",
                                   swagger_js_url=f"{DOCS_ASSETS}/swagger-ui-bundle.js",
                                   swagger_css_url=f"{DOCS_ASSETS}/swagger-ui.css",
                                   swagger_favicon_url=f"{DOCS_ASSETS}/favicon-32x32.png")

    @r.get("/redoc", include_in_schema=False)
    async def redoc() -> RedirectResponse:
        return RedirectResponse("/docs")  # ReDoc has no offline bundle on PyPI; Swagger UI shows the same document

    @r.get("/healthz", summary="Liveness: the process answers")
    async def healthz() -> dict[str, str]:
        return {"status": "ok"}

    @r.get("/readyz", summary="Readiness: 200 only when every served model is loaded and warmed up",
           responses=not_ready)
    async def readyz() -> JSONResponse:
        body = {"ready": service.is_ready, "models": {name: b.running for name, b in service.batchers.items()}}
        return JSONResponse(body, status_code=200 if service.is_ready else 503)

    @r.get("/models", response_model=ModelsResponse, response_model_exclude_none=True,
           summary="Served models: version, checkpoint, inputs and outputs, decoding defaults, metrics",
           responses=not_ready)
    async def models() -> dict[str, Any]:
        if not service.runners:
            raise HTTPException(503, "models are not loaded yet", headers={"Retry-After": "1"})
        return {"models": [runner.info() for runner in service.runners.values()]}

    def find(name: str) -> Any:
        for key, runner in service.runners.items():
            if name in (key, runner.name):
                return runner
        if name in MODEL_SETTINGS:
            return service.runner(name)  # 404 not served, or 503 not loaded yet
        served = sorted({k for k in service.runners} | {r.name for r in service.runners.values()})
        raise HTTPException(404, f"no model named {name!r}; served: {', '.join(served) or 'none yet'}")

    @r.get("/models/{name}", response_model=ModelInfo, response_model_exclude_none=True,
           summary="One model: by key (classifier, transcriber) or by name", responses=unknown_model)
    async def model(name: str) -> dict[str, Any]:
        return find(name).info()

    @r.get("/metrics", summary="Prometheus metrics", response_class=Response)
    async def prometheus() -> Response:
        return Response(generate_latest(service.metrics.registry), media_type=CONTENT_TYPE_LATEST)

    # KServe v2 / Open Inference Protocol: health and metadata (see the module docstring for infer).
    @r.get("/v2/health/live", summary="Open Inference Protocol: liveness")
    async def v2_live() -> dict[str, bool]:
        return {"live": True}

    @r.get("/v2/health/ready", summary="Open Inference Protocol: readiness", responses=not_ready)
    async def v2_ready() -> JSONResponse:
        return JSONResponse({"ready": service.is_ready}, status_code=200 if service.is_ready else 503)

    @r.get("/v2/models/{name}", summary="Open Inference Protocol: model metadata", responses=unknown_model)
    async def v2_model(name: str) -> dict[str, Any]:
        info = find(name).info()
        return {"name": info["name"], "versions": [info["version"]], "platform": "pytorch",
                "inputs": [{"name": "file", "datatype": "BYTES", "shape": [-1]}],
                "outputs": [{"name": o["name"], "datatype": o["datatype"].replace("object", "BYTES")
                             .replace("string", "BYTES"), "shape": o.get("shape", [-1])} for o in info["outputs"]],
                "parameters": {"route": info["route"], "task": info["task"]}}

    @r.get("/v2/models/{name}/ready", summary="Open Inference Protocol: model readiness", responses=unknown_model)
    async def v2_model_ready(name: str) -> JSONResponse:
        runner = find(name)
        key = next(k for k, v in service.runners.items() if v is runner)
        ready = service.is_ready and key in service.batchers and service.batchers[key].running
        return JSONResponse({"name": runner.name, "ready": ready}, status_code=200 if ready else 503)

