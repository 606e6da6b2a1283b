"""Endpoint ids as fal spells them: `[namespace/]owner/app[/path...]`."""

from __future__ import annotations

from dataclasses import dataclass

# For these prefixes the app is the third segment (fal-client `AppId.from_endpoint_id`).
NAMESPACES = frozenset({"workflows", "comfy"})


@dataclass(frozen=True, slots=True)
class EndpointId:
    """A parsed endpoint id. `app_path` is what status, result and cancel URLs carry."""

    namespace: str | None
    owner: str
    app: str
    path: str | None

    @classmethod
    def parse(cls, endpoint_id: str) -> EndpointId | None:
        """Parse a full endpoint id; None when it has no owner and app."""
        parts = endpoint_id.strip("/").split("/")
        namespace = parts[0] if parts[0] in NAMESPACES else None
        if namespace is not None:
            parts = parts[1:]
        if len(parts) < 2 or not all(parts):
            return None
        return cls(namespace, parts[0], parts[1], "/".join(parts[2:]) or None)

    @property
    def app_path(self) -> str:
        """`[namespace/]owner/app`, with no sub-path."""
        prefix = f"{self.namespace}/" if self.namespace else ""
        return f"{prefix}{self.owner}/{self.app}"

    def __str__(self) -> str:
        return f"{self.app_path}/{self.path}" if self.path else self.app_path


def parse_app_path(app_path: str) -> str | None:
    """Normalise the `[namespace/]owner/app` part of a request URL; None if it is not one."""
    endpoint = EndpointId.parse(app_path)
    if endpoint is None or endpoint.path is not None:
        return None
    return endpoint.app_path
