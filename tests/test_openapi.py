"""The API contract (api/openapi.yaml) against the gateway that serves it.

The document must be well-formed OpenAPI 3.1, name exactly the routes the app registers, mirror
the request models' fields and bounds, and describe what the routes really answer: live
responses are checked against its schemas with a small JSON Schema subset validator.
"""

from __future__ import annotations

import base64
import dataclasses
import json
import re
from collections.abc import AsyncGenerator, Iterator
from pathlib import Path
from typing import Any, get_args

import aiohttp
import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st
from pydantic import BaseModel

from inzwa_voice.api import openai_routes, schemas
from inzwa_voice.api.middleware import PUBLIC_PATHS, PUBLIC_PREFIXES, SELF_AUTHENTICATED_PREFIXES
from inzwa_voice.engines.base import ChatMessage
from inzwa_voice.engines.runtime import Engines
from inzwa_voice.errors import ErrorType
from inzwa_voice.media.audiofile import RESPONSE_FORMATS, content_type
from tests.conftest import Server, ServerFactory, english_server

SPEC_PATH = Path(__file__).resolve().parents[1] / "api" / "openapi.yaml"
METHODS = ("get", "put", "post", "delete", "options", "head", "patch", "trace")
PATH_ITEM_FIELDS = {"$ref", "summary", "description", "servers", "parameters", *METHODS}
TOP_LEVEL_FIELDS = {
    "openapi",
    "info",
    "jsonSchemaDialect",
    "servers",
    "paths",
    "webhooks",
    "components",
    "security",
    "tags",
    "externalDocs",
}
STATUS = re.compile(r"^([1-5]\d\d|[1-5]XX|default)$")
ERROR_REF = "#/components/schemas/Error"

Json = Any


@pytest.fixture(scope="module")
def spec() -> Json:
    return yaml.safe_load(SPEC_PATH.read_text(encoding="utf-8"))


# --- reading the document ---------------------------------------------------------------------


def resolve(spec: Json, ref: str) -> Json:
    """Follow a local JSON pointer such as ``#/components/schemas/Error``."""
    assert ref.startswith("#/"), f"only local references are used: {ref}"
    node = spec
    for token in ref[2:].split("/"):
        key = token.replace("~1", "/").replace("~0", "~")
        assert isinstance(node, dict) and key in node, f"unresolved $ref {ref}"
        node = node[key]
    return node


def deref(spec: Json, node: Json) -> Json:
    while isinstance(node, dict) and "$ref" in node:
        node = resolve(spec, node["$ref"])
    return node


def walk(node: Json) -> Iterator[Json]:
    yield node
    children = node.values() if isinstance(node, dict) else node if isinstance(node, list) else ()
    for child in children:
        yield from walk(child)


def operations(spec: Json) -> Iterator[tuple[str, str, Json]]:
    for path, item in spec["paths"].items():
        for method in METHODS:
            if method in item:
                yield method.upper(), path, item[method]


def is_public(path: str) -> bool:
    """No bearer key at the middleware: public, or the route authenticates its callers itself."""
    return path in PUBLIC_PATHS or path.startswith(PUBLIC_PREFIXES + SELF_AUTHENTICATED_PREFIXES)


# --- a JSON Schema subset, enough for the schemas this document uses --------------------------

_TYPES: dict[str, Any] = {
    "string": str,
    "object": dict,
    "array": list,
    "boolean": bool,
    "null": type(None),
    "integer": int,
    "number": (int, float),
}


def _is_type(value: Json, name: str) -> bool:
    if name in ("integer", "number") and isinstance(value, bool):
        return False
    return isinstance(value, _TYPES[name])


def _ecma(pattern: str) -> str:
    """A JSON Schema pattern (ECMA-262) as a Python one: there ``$`` ends the input, while
    Python's also matches before a final newline."""
    return re.sub(r"(?<!\\)\$", r"\\Z", pattern)


def schema_errors(spec: Json, schema: Json, value: Json, at: str = "$") -> list[str]:
    """What in ``value`` breaks ``schema``; objects may hold no property the schema leaves out."""
    if "$ref" in schema:
        found = schema_errors(spec, resolve(spec, schema["$ref"]), value, at)
        siblings = {k: v for k, v in schema.items() if k != "$ref"}
        return found + (schema_errors(spec, siblings, value, at) if siblings else [])
    errors: list[str] = []
    types = schema.get("type")
    if types is not None:
        names = [types] if isinstance(types, str) else types
        if not any(_is_type(value, name) for name in names):
            return [f"{at}: {value!r} is not of type {types}"]
    if "const" in schema and value != schema["const"]:
        errors.append(f"{at}: {value!r} is not {schema['const']!r}")
    if "enum" in schema and value not in schema["enum"]:
        errors.append(f"{at}: {value!r} is not one of {schema['enum']}")
    if "anyOf" in schema and all(schema_errors(spec, s, value, at) for s in schema["anyOf"]):
        errors.append(f"{at}: matches none of anyOf")
    if "oneOf" in schema and sum(not schema_errors(spec, s, value, at) for s in schema["oneOf"]) != 1:
        errors.append(f"{at}: does not match exactly one of oneOf")
    if isinstance(value, (int, float)) and not isinstance(value, bool):
        if "minimum" in schema and value < schema["minimum"]:
            errors.append(f"{at}: {value} < {schema['minimum']}")
        if "maximum" in schema and value > schema["maximum"]:
            errors.append(f"{at}: {value} > {schema['maximum']}")
    if isinstance(value, str):
        if len(value) < schema.get("minLength", 0) or len(value) > schema.get("maxLength", len(value)):
            errors.append(f"{at}: length {len(value)} is out of bounds")
        if "pattern" in schema and not re.search(_ecma(schema["pattern"]), value):
            errors.append(f"{at}: {value!r} does not match {schema['pattern']}")
    if isinstance(value, list):
        if len(value) < schema.get("minItems", 0) or len(value) > schema.get("maxItems", len(value)):
            errors.append(f"{at}: {len(value)} items is out of bounds")
        for i, item in enumerate(value):
            errors += schema_errors(spec, schema.get("items", {}), item, f"{at}[{i}]")
    if isinstance(value, dict):
        errors += [f"{at}: {key!r} is required" for key in schema.get("required", []) if key not in value]
        properties = schema.get("properties", {})
        if properties and schema.get("additionalProperties") is not True:
            errors += [f"{at}: {key!r} is not documented" for key in value if key not in properties]
        for key, sub in properties.items():
            if key in value:
                errors += schema_errors(spec, sub, value[key], f"{at}.{key}")
    return errors


def assert_valid(spec: Json, schema: Json, value: Json) -> None:
    errors = schema_errors(spec, schema, value)
    assert not errors, "\n".join(errors)


# --- the document itself ----------------------------------------------------------------------


async def test_served_document_is_the_yaml_file_as_json(server: Server, spec: Json) -> None:
    async with server.http.get(server.url + "/openapi.json") as resp:
        assert resp.status == 200
        assert resp.content_type == "application/json"
        assert resp.headers["X-Request-ID"]
        served = await resp.json()
    assert served == json.loads(json.dumps(spec))


def test_document_is_well_formed_openapi_3_1(spec: Json) -> None:
    assert re.fullmatch(r"3\.1\.\d+", spec["openapi"])
    assert set(spec) <= TOP_LEVEL_FIELDS | {k for k in spec if k.startswith("x-")}
    assert spec["info"]["title"] and spec["info"]["version"] and spec["info"]["description"]
    declared_tags = {tag["name"] for tag in spec.get("tags", [])}
    schemes = spec["components"]["securitySchemes"]
    operation_ids = []
    for path, item in spec["paths"].items():
        assert path.startswith("/"), path
        assert set(item) <= PATH_ITEM_FIELDS | {k for k in item if k.startswith("x-")}, path
        assert any(method in item for method in METHODS), f"{path} has no operation"
    for method, path, op in operations(spec):
        where = f"{method} {path}"
        operation_ids.append(op["operationId"])
        assert op.get("summary"), where
        assert set(op.get("tags", [])) <= declared_tags, where
        params = [deref(spec, p) for p in spec["paths"][path].get("parameters", []) + op.get("parameters", [])]
        for param in params:
            assert param["in"] in ("query", "header", "path", "cookie") and "schema" in param, where
        declared = {p["name"] for p in params if p["in"] == "path" and p.get("required") is True}
        assert set(re.findall(r"{([^}]+)}", path)) == declared, f"{where}: path parameters"
        if "requestBody" in op:
            assert deref(spec, op["requestBody"])["content"], where
        assert op["responses"], f"{where} has no responses"
        for status, response in op["responses"].items():
            assert STATUS.match(status), f"{where}: status {status}"
            response = deref(spec, response)
            assert response.get("description"), f"{where} {status}: no description"
            for media in response.get("content", {}).values():
                assert isinstance(media, dict), f"{where} {status}"
        for requirement in op.get("security", spec.get("security", [])):
            assert set(requirement) <= set(schemes), where
    assert len(operation_ids) == len(set(operation_ids)), "operationIds must be unique"


def test_every_ref_resolves(spec: Json) -> None:
    refs = [node["$ref"] for node in walk(spec) if isinstance(node, dict) and "$ref" in node]
    assert refs
    for ref in refs:
        resolve(spec, ref)


async def test_documented_routes_are_exactly_the_registered_ones(server: Server, spec: Json) -> None:
    registered = {
        (route.method, route.resource.canonical)
        for route in server.app.router.routes()
        # HEAD mirrors GET; OPTIONS answers CORS preflights, which are HTTP plumbing, not operations.
        if route.method not in ("HEAD", "OPTIONS") and route.resource is not None
    }
    documented = {(method, path) for method, path, _ in operations(spec)}
    assert documented - registered == set(), "documented but not served"
    assert registered - documented == set(), "served but not documented"


def test_security_and_errors_are_documented_as_the_middleware_does_them(spec: Json) -> None:
    for method, path, op in operations(spec):
        where = f"{method} {path}"
        assert (op.get("security") == []) == is_public(path), f"{where}: public iff the middleware says so"
        if not is_public(path):
            assert {"401", "429"} <= set(op["responses"]), where
        for status, response in op["responses"].items():
            if status.startswith(("4", "5")):
                schema = deref(spec, response)["content"]["application/json"]["schema"]
                assert schema == {"$ref": ERROR_REF}, f"{where} {status}"
            assert "X-Request-ID" in deref(spec, response)["headers"], f"{where} {status}"
        if op.get("requestBody"):
            assert {"400", "413", "415"} <= set(op["responses"]), where


def test_enums_match_the_implementation(spec: Json) -> None:
    schemas_ = spec["components"]["schemas"]
    assert schemas_["Error"]["properties"]["error"]["properties"]["type"]["enum"] == list(get_args(ErrorType))
    form = schemas_["TranscriptionForm"]["properties"]
    assert tuple(form["response_format"]["enum"]) == openai_routes._TRANSCRIPT_FORMATS
    speech = spec["components"]["responses"]["Speech"]["content"]
    assert set(speech) == {content_type(fmt) for fmt in RESPONSE_FORMATS}
    assert set(schemas_["TtsRequest"]["properties"]["format"]["enum"]) == set(RESPONSE_FORMATS)


# --- request schemas mirror the pydantic models -----------------------------------------------

_BOUNDS = (
    "minimum",
    "maximum",
    "exclusiveMinimum",
    "exclusiveMaximum",
    "minLength",
    "maxLength",
    "minItems",
    "maxItems",
    "enum",
    "const",
)


def _norm(value: Json) -> Json:
    if isinstance(value, bool) or value is None:
        return value
    if isinstance(value, (int, float)):
        return float(value)
    if isinstance(value, list):
        return tuple(sorted((_norm(v) for v in value), key=repr))
    return value


def bounds(node: Json, spec: Json | None = None) -> set[tuple[str, Json]]:
    """Every bound anywhere in ``node``, following ``$ref`` only when ``spec`` is given."""
    found: set[tuple[str, Json]] = set()
    if isinstance(node, dict):
        if spec is not None and "$ref" in node:
            found |= bounds(resolve(spec, node["$ref"]), spec)
        for key, value in node.items():
            if key in _BOUNDS:
                found.add((key, _norm(value)))
            elif isinstance(value, (dict, list)) and key not in ("examples", "default"):
                found |= bounds(value, spec)
    elif isinstance(node, list):
        for item in node:
            found |= bounds(item, spec)
    return found


def default(node: Json, spec: Json) -> Json:
    return node["default"] if "default" in node else deref(spec, node).get("default")


@pytest.mark.parametrize(
    "model",
    [
        schemas.AsrRequest,
        schemas.ChatRequest,
        schemas.TtsRequest,
        schemas.SpeechRequest,
        schemas.ChatCompletionRequest,
        schemas.Message,
    ],
    ids=lambda m: m.__name__,
)
def test_request_schema_mirrors_the_model(spec: Json, model: type[BaseModel]) -> None:
    ours = spec["components"]["schemas"][model.__name__]
    theirs = model.model_json_schema()
    assert set(ours["properties"]) == set(theirs["properties"]), f"{model.__name__}: fields"
    assert set(ours.get("required", [])) == set(theirs.get("required", [])), f"{model.__name__}: required"
    for name, prop in theirs["properties"].items():
        documented = ours["properties"][name]
        missing = bounds(prop) - bounds(documented, spec)
        assert not missing, f"{model.__name__}.{name}: bounds {missing} are not documented"
        if prop.get("default") is not None:
            assert _norm(default(documented, spec)) == _norm(prop["default"]), f"{model.__name__}.{name}"


# --- live responses match the document --------------------------------------------------------


def response_doc(spec: Json, method: str, path: str, status: int) -> Json:
    op = spec["paths"].get(path, {}).get(method.lower())
    if op is None:  # unmatched paths and methods answer like NotFound
        return deref(spec, spec["components"]["responses"]["NotFound"])
    assert str(status) in op["responses"], f"{method} {path} answered an undocumented {status}"
    return deref(spec, op["responses"][str(status)])


async def check(spec: Json, method: str, path: str, resp: aiohttp.ClientResponse) -> list[Json]:
    """Assert ``resp`` is documented; return its JSON value, or its SSE values."""
    doc = response_doc(spec, method, path, resp.status)
    assert resp.headers["X-Request-ID"]
    content = {key.split(";")[0].strip(): media for key, media in doc.get("content", {}).items()}
    assert resp.content_type in content, f"{method} {path}: {resp.content_type} is not documented"
    media = content[resp.content_type]
    if resp.content_type == "application/json":
        body = await resp.json()
        assert_valid(spec, media["schema"], body)
        return [body]
    if resp.content_type == "text/event-stream":
        lines = [line.decode().rstrip("\n") async for line in resp.content if line.strip()]
        assert all(line.startswith("data: ") for line in lines) and lines[-1] == "data: [DONE]"
        events = [json.loads(line[6:]) for line in lines[:-1]]
        for event in events:
            assert_valid(spec, media["x-sse-data"], event)
        return events
    assert await resp.read()
    return []


USER = [{"role": "user", "content": "Where is the nearest clinic?"}]

CASES: list[tuple[str, str, dict[str, Any], int]] = [
    ("GET", "/health", {}, 200),
    ("GET", "/metrics", {}, 200),
    ("GET", "/v1/voices", {}, 200),
    ("GET", "/v1/models", {}, 200),
    ("POST", "/v1/admin/warmup", {}, 200),
    ("POST", "/v1/chat", {"json": {"messages": USER, "max_tokens": 12, "language": "en"}}, 200),
    ("POST", "/v1/chat", {"json": {"messages": USER, "max_tokens": 12, "stream": True}}, 200),
    (
        "POST",
        "/v1/chat/completions",
        {"json": {"model": "gpt-4o-mini", "messages": USER, "max_tokens": 12}},
        200,
    ),
    ("POST", "/v1/chat/completions", {"json": {"messages": USER, "max_tokens": 12, "stream": True}}, 200),
    ("POST", "/v1/tts", {"json": {"text": "Hello.", "format": "flac"}}, 200),
    ("POST", "/v1/audio/speech", {"json": {"input": "Hello.", "voice": "alloy"}}, 200),
    ("POST", "/v1/chat", {"data": "{", "headers": {"Content-Type": "application/json"}}, 400),
    ("POST", "/v1/chat/completions", {"json": {"messages": USER, "n": 2}}, 400),
    ("POST", "/v1/asr", {"json": {"audio_base64": "not base64!"}}, 400),
    ("POST", "/v1/audio/speech", {"json": {"input": "Hello.", "voice": "nobody"}}, 400),
    ("POST", "/v1/tts", {"data": "Hello."}, 415),
    ("POST", "/v1/audio/transcriptions", {"json": {"model": "whisper-1"}}, 415),
    ("GET", "/v1/nothing-here", {}, 404),
    ("GET", "/v1/chat", {}, 405),
]


@pytest.mark.parametrize(
    ("method", "path", "kwargs", "status"),
    CASES,
    ids=[f"{i}-{m} {p} {s}" for i, (m, p, _, s) in enumerate(CASES)],
)
async def test_live_response_matches_the_document(
    server: Server, spec: Json, method: str, path: str, kwargs: dict[str, Any], status: int
) -> None:
    async with server.http.request(method, server.url + path, **kwargs) as resp:
        assert resp.status == status, await resp.text()
        values = await check(spec, method, path, resp)
    if kwargs.get("json", {}).get("stream"):
        assert values, "a stream sends events before [DONE]"


@pytest.mark.parametrize("fmt", ["verbose_json", "json", "text", "srt", "vtt"])
async def test_transcription_formats_match_the_document(server: Server, spec: Json, fmt: str) -> None:
    async with server.http.post(
        server.v1 + "/audio/speech",
        json={"input": "Please call me back.", "voice": "joe", "response_format": "wav"},
    ) as resp:
        audio = await resp.read()
    form = aiohttp.FormData()
    form.add_field("file", audio, filename="speech.wav", content_type="audio/wav")
    form.add_field("model", "whisper-1")
    form.add_field("language", "en")
    form.add_field("response_format", fmt)
    async with server.http.post(server.v1 + "/audio/transcriptions", data=form) as resp:
        assert resp.status == 200, await resp.text()
        await check(spec, "POST", "/v1/audio/transcriptions", resp)


async def test_limit_and_auth_errors_match_the_document(make_server: Any, spec: Json) -> None:
    server = await make_server(api_keys=["sk-doc"], rate_limit_per_minute=1, max_upload_bytes=2048)
    async with server.http.get(server.v1 + "/models") as resp:
        assert resp.status == 401
        await check(spec, "GET", "/v1/models", resp)
        assert resp.headers["WWW-Authenticate"] == "Bearer"
    auth = {"Authorization": "Bearer sk-doc"}
    payload = {"messages": [{"role": "user", "content": "x" * 4096}]}
    async with server.http.post(server.v1 + "/chat", json=payload, headers=auth) as resp:
        assert resp.status == 413
        await check(spec, "POST", "/v1/chat", resp)
        assert resp.headers["X-RateLimit-Limit"] == "1" and resp.headers["X-RateLimit-Remaining"] == "0"
    async with server.http.get(server.v1 + "/models", headers=auth) as resp:
        assert resp.status == 429
        await check(spec, "GET", "/v1/models", resp)
        assert int(resp.headers["Retry-After"]) >= 1
    async with server.http.get(server.url + "/openapi.json") as resp:
        assert resp.status == 200, "the document is public even with keys and limits on"


# --- the document refuses what the server refuses ---------------------------------------------

REFUSED = [
    ("/v1/audio/speech", "SpeechRequest", {"input": "Hello.", "voice": ""}),
    ("/v1/asr", "AsrRequest", {"audio_base64": "0"}),
    ("/v1/asr", "AsrRequest", {"audio_base64": "AAA"}),
    ("/v1/asr", "AsrRequest", {"audio_base64": "AA==AA=="}),
    ("/v1/asr", "AsrRequest", {"audio_base64": "%%%%"}),
]


@pytest.mark.parametrize(("path", "schema", "body"), REFUSED, ids=[f"{p} {b}" for p, _, b in REFUSED])
async def test_the_document_refuses_what_the_server_refuses(
    server: Server, spec: Json, path: str, schema: str, body: Json
) -> None:
    async with server.http.post(server.url + path, json=body) as resp:
        assert resp.status == 400, await resp.text()
    assert schema_errors(spec, spec["components"]["schemas"][schema], body), f"the document accepts {body}"


@given(value=st.text(alphabet="AB+/=0 \n%", max_size=12))
def test_audio_base64_that_the_document_admits_the_server_decodes(spec: Json, value: str) -> None:
    audio_base64 = spec["components"]["schemas"]["AsrRequest"]["properties"]["audio_base64"]
    if not schema_errors(spec, audio_base64, value):
        base64.b64decode(value, validate=True)


class BreaksOff:
    """An LLM that says a few words, then fails: the stream has begun, its status is sent."""

    name = "breaks-off"

    async def stream(
        self,
        messages: list[ChatMessage],
        *,
        max_tokens: int | None = None,
        temperature: float | None = None,
        stop: list[str] | None = None,
    ) -> AsyncGenerator[str, None]:
        yield "The sea is wide. "
        raise RuntimeError("the model broke off")

    async def prime(self, messages: list[ChatMessage]) -> AsyncGenerator[str, None]:
        return
        yield  # reads nothing ahead

    @property
    def prompt_use(self) -> dict[str, int]:
        return {}  # nothing is read

    def warm(self) -> None:
        pass

    async def close(self) -> None:
        pass


@pytest.mark.parametrize("path", ["/v1/chat", "/v1/chat/completions"])
async def test_a_stream_that_breaks_off_ends_as_documented(
    make_server: ServerFactory, engines: Engines, spec: Json, path: str
) -> None:
    """The error event takes the done event's (or final chunk's) place, before ``[DONE]``."""
    broken = dataclasses.replace(engines, llm=BreaksOff(), local_llm=False)
    server = await english_server(make_server, with_engines=broken)
    body = {"messages": [{"role": "user", "content": "Write me a poem about the sea."}], "stream": True}
    if path == "/v1/chat":
        body["profile"] = "model_only"  # no knowledge base: the question goes to the LLM
    async with server.http.post(server.url + path, json=body) as resp:
        assert resp.status == 200
        events = await check(spec, "POST", path, resp)
    assert events[-1]["error"]["code"] == "generation_failed"
    assert not any(e.get("done") for e in events)
    assert not any(choice.get("finish_reason") for e in events for choice in e.get("choices", []))
