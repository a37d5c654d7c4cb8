"""The gateway's own errors, in the OpenAI error shape that every OpenAI client already parses.

``{"error": {"message": ..., "type": ..., "param": ..., "code": ...}}``; ``error_type`` is what the
RequestRecord and the metrics carry.
"""

from __future__ import annotations

import orjson


class GatewayError(Exception):
    """An error the gateway answers itself, before or instead of the engine."""

    def __init__(
        self,
        status: int,
        message: str,
        *,
        type: str = "invalid_request_error",  # noqa: A002 - the OpenAI field name
        code: str | None = None,
        param: str | None = None,
        error_type: str | None = None,
    ) -> None:
        super().__init__(message)
        self.status = status
        self.message = message
        self.type = type
        self.code = code
        self.param = param
        self.error_type = error_type or code or type

    def body(self) -> bytes:
        return error_body(self.message, type=self.type, code=self.code, param=self.param)


def error_body(message: str, *, type: str, code: str | None = None, param: str | None = None) -> bytes:  # noqa: A002
    return orjson.dumps({"error": {"message": message, "type": type, "param": param, "code": code}})


def invalid_json(detail: str) -> GatewayError:
    return GatewayError(400, f"We could not parse the JSON body of your request: {detail}", code="invalid_json")


def missing_field(name: str) -> GatewayError:
    return GatewayError(400, f"Missing required parameter: '{name}'.", code="missing_required_parameter", param=name)


def invalid_field(name: str, why: str) -> GatewayError:
    return GatewayError(400, f"Invalid value for '{name}': {why}", code="invalid_value", param=name)


def missing_key() -> GatewayError:
    return GatewayError(
        401,
        "You didn't provide an API key. Send it as 'Authorization: Bearer <key>'.",
        code="missing_api_key",
    )


def unknown_key() -> GatewayError:
    return GatewayError(401, "Incorrect API key provided.", code="invalid_api_key")


def unknown_model(model: str) -> GatewayError:
    shown = model if len(model) <= 128 else model[:128] + "..."
    return GatewayError(
        404, f"The model '{shown}' does not exist or you do not have access to it.", code="model_not_found", param="model"
    )


def duplicate_header(name: str) -> GatewayError:
    return GatewayError(400, f"Send one '{name}' header: this request had several with different values.",
                        code="invalid_header", param=name)


def body_too_large(limit: int) -> GatewayError:
    return GatewayError(413, f"Request body is larger than the limit of {limit} bytes.", code="request_too_large")


def unsupported_encoding(encoding: str) -> GatewayError:
    """A compressed request body: it used to be read as text and refused as "not valid UTF-8"."""
    shown = encoding if len(encoding) <= 64 else encoding[:64] + "..."
    return GatewayError(415, f"Content-Encoding '{shown}' is not supported: send the request body uncompressed.",
                        code="unsupported_content_encoding")


def not_found(path: str) -> GatewayError:
    return GatewayError(404, f"Unknown endpoint: {path}", code="unknown_url")


def method_not_allowed(method: str, path: str) -> GatewayError:
    return GatewayError(405, f"Method {method} is not allowed on {path}.", code="method_not_allowed")


def upstream_unreachable(backend: str) -> GatewayError:
    return GatewayError(
        502, f"The backend '{backend}' is unreachable.", type="api_error", code="upstream_unreachable"
    )


def upstream_timeout(backend: str) -> GatewayError:
    return GatewayError(504, f"The backend '{backend}' timed out.", type="api_error", code="upstream_timeout")


def upstream_auth_failed(backend: str, status: int) -> GatewayError:
    """The engine refused the gateway's own credentials (``api_key_env``). Relaying its 401 told the
    tenant its key was wrong (``openai.AuthenticationError``), and its body could quote the backend's
    key (OpenAI-style "Incorrect API key provided: sk-..."). A misconfigured gateway is a bad gateway."""
    return GatewayError(
        502, f"The backend '{backend}' refused the gateway's credentials (HTTP {status}); tell the operator.",
        type="api_error", code="upstream_auth_failed",
    )


def upstream_response_too_large(backend: str, limit: int) -> GatewayError:
    return GatewayError(
        502, f"The backend '{backend}' sent a response over {limit >> 20} MiB; it was not relayed.",
        type="api_error", code="upstream_response_too_large",
    )
