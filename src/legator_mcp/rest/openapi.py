"""Generate the OpenAPI 3.1 document from the route table and the pydantic models it names."""

import re
from typing import Any, Literal

from pydantic import BaseModel
from pydantic.json_schema import JsonSchemaMode, models_json_schema

from legator_mcp.rest._routing import RouteSpec

__all__ = ["build_openapi"]

_PATH_PARAM = re.compile(r"{([A-Za-z_][A-Za-z0-9_]*)}")

_ERROR_SCHEMA: dict[str, Any] = {
    "type": "object",
    "required": ["error"],
    "properties": {
        "error": {
            "type": "object",
            "required": ["code", "message"],
            "properties": {"code": {"type": "string"}, "message": {"type": "string"}, "details": {}},
        }
    },
}


def _error(description: str) -> dict[str, Any]:
    return {
        "description": description,
        "content": {"application/json": {"schema": {"$ref": "#/components/schemas/Error"}}},
    }


def build_openapi(specs: list[RouteSpec], *, version: str) -> dict[str, Any]:
    """Describe every route: parameters, bodies, responses, the permission it needs and the error shape."""
    wanted: list[tuple[type[BaseModel], JsonSchemaMode]] = []
    for spec in specs:
        if spec.body is not None:
            wanted.append((spec.body, "validation"))
        if spec.response is not None:
            wanted.append((spec.response, "serialization"))
    unique = list(dict.fromkeys(wanted))
    refs, schema = models_json_schema(unique, ref_template="#/components/schemas/{model}")
    components: dict[str, Any] = dict(schema.get("$defs", {}))
    components["Error"] = _ERROR_SCHEMA

    paths: dict[str, dict[str, Any]] = {}
    for spec in specs:
        operation: dict[str, Any] = {
            "summary": spec.summary,
            "operationId": f"{spec.method.lower()}_{re.sub(r'[^A-Za-z0-9]+', '_', spec.path).strip('_')}",
            "tags": [spec.tag],
            "x-required-permission": spec.permission.value if spec.permission else None,
        }
        parameters: list[dict[str, Any]] = [
            {"name": name, "in": "path", "required": True, "schema": {"type": "string"}}
            for name in _PATH_PARAM.findall(spec.path)
        ]
        if spec.query is not None:
            query_schema = spec.query.model_json_schema(ref_template="#/components/schemas/{model}")
            components.update(query_schema.get("$defs", {}))
            required = set(query_schema.get("required", []))
            for name, prop in query_schema.get("properties", {}).items():
                parameters.append({"name": name, "in": "query", "required": name in required, "schema": prop})
        if parameters:
            operation["parameters"] = parameters
        if spec.body is not None:
            operation["requestBody"] = {
                "required": True,
                "content": {"application/json": {"schema": refs[(spec.body, "validation")]}},
            }
        success: dict[str, Any] = {"description": "OK"}
        media: Literal["application/json"] | str = spec.response_media_type
        if spec.response is not None:
            success["content"] = {media: {"schema": refs[(spec.response, "serialization")]}}
        elif spec.status != 204:
            success["content"] = {media: {"schema": {}}}
        operation["responses"] = {str(spec.status if spec.status != 200 else 200): success}
        if not spec.public:
            operation["security"] = [{"bearerAuth": []}]
            operation["responses"]["401"] = _error("No or invalid credentials")
            operation["responses"]["403"] = _error("Insufficient permissions")
        if spec.body is not None or spec.query is not None:
            operation["responses"]["422"] = _error("The request did not validate")
        if _PATH_PARAM.search(spec.path):
            operation["responses"]["404"] = _error("Not found")
        if spec.method in {"POST", "PUT", "PATCH"}:
            operation["responses"]["413"] = _error("Request body too large")
        paths.setdefault(spec.path, {})[spec.method.lower()] = operation

    return {
        "openapi": "3.1.0",
        "info": {"title": "Legator control plane", "version": version},
        "paths": paths,
        "components": {
            "schemas": components,
            "securitySchemes": {"bearerAuth": {"type": "http", "scheme": "bearer", "description": "lgk_ API key"}},
        },
    }
