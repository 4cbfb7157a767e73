"""``/docs`` (Swagger UI) and ``/redoc`` (ReDoc) served with no CDN: their scripts, style and favicon are the files
the ``fastapi-offline`` package ships, served by this API under ``/docs-assets/``; nothing on either page loads
from another host (no Google fonts, no online validator badge), so both render on a machine without internet."""

from __future__ import annotations

from functools import cache
from importlib.resources import files

from fastapi import APIRouter, HTTPException, Request
from fastapi.openapi.docs import get_redoc_html, get_swagger_ui_html, get_swagger_ui_oauth2_redirect_html
from fastapi.responses import HTMLResponse, Response

ASSETS_PATH = "/docs-assets"
ASSETS = {  # the only files served, with their media types
    "swagger-ui-bundle.js": "text/javascript; charset=utf-8",
    "swagger-ui.css": "text/css; charset=utf-8",
    "redoc.standalone.js": "text/javascript; charset=utf-8",
    "favicon.png": "image/png",
}
OAUTH2_REDIRECT = "/docs/oauth2-redirect"
# ReDoc's bundle shows a "powered by" logo it loads from its vendor's CDN; served from here instead
REDOC_CDN_LOGO = b"https://cdn.redoc.ly/redoc/logo-mini.svg"

router = APIRouter(include_in_schema=False)


def _openapi_url(request: Request) -> str:
    return f"{request.scope.get('root_path', '')}{request.app.openapi_url}"


@router.get("/docs", response_class=HTMLResponse)
def swagger(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_swagger_ui_html(
        openapi_url=_openapi_url(request), title=f"{request.app.title} - Swagger UI",
        oauth2_redirect_url=OAUTH2_REDIRECT, swagger_js_url=f"{root}{ASSETS_PATH}/swagger-ui-bundle.js",
        swagger_css_url=f"{root}{ASSETS_PATH}/swagger-ui.css", swagger_favicon_url=f"{root}{ASSETS_PATH}/favicon.png",
        swagger_ui_parameters={"validatorUrl": None})  # no badge fetched from the online validator


@router.get(OAUTH2_REDIRECT, response_class=HTMLResponse)
def swagger_redirect() -> HTMLResponse:
    return get_swagger_ui_oauth2_redirect_html()


@router.get("/redoc", response_class=HTMLResponse)
def redoc(request: Request) -> HTMLResponse:
    root = request.scope.get("root_path", "")
    return get_redoc_html(openapi_url=_openapi_url(request), title=f"{request.app.title} - ReDoc",
                          redoc_js_url=f"{root}{ASSETS_PATH}/redoc.standalone.js",
                          redoc_favicon_url=f"{root}{ASSETS_PATH}/favicon.png", with_google_fonts=False)


@cache
def _asset_body(name: str) -> bytes:
    body = files("fastapi_offline").joinpath("static", name).read_bytes()
    if name == "redoc.standalone.js":
        body = body.replace(REDOC_CDN_LOGO, f"{ASSETS_PATH}/favicon.png".encode())
    return body


@router.get(ASSETS_PATH + "/{name}")
def asset(name: str) -> Response:
    if name not in ASSETS:
        raise HTTPException(404, "no such documentation asset")
    return Response(_asset_body(name), media_type=ASSETS[name], headers={"Cache-Control": "public, max-age=86400"})
