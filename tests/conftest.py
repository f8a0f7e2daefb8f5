"""Shared fixtures: the anyio backend and the simulated platform on loopback."""

from __future__ import annotations

import copy
import json
from collections.abc import AsyncIterator
from pathlib import Path
from typing import Any

import pytest
from jsonschema import Draft7Validator
from referencing import Registry, Resource
from referencing.jsonschema import DRAFT7

from runner.sim import SimConfig, Simulator


@pytest.fixture(scope="session")
def anyio_backend() -> str:
    # uvicorn (under the simulator) runs on asyncio only.
    return "asyncio"


@pytest.fixture
async def sim() -> AsyncIterator[Simulator]:
    """A healthy, unlimited simulator on a free port; tasks finish after 0.2 s."""
    async with Simulator(SimConfig(task_seconds=0.2)) as running:
        yield running


# The platform's public OpenAPI document, copied into the repository (tests/data/README.md).
SPEC_PATH = Path(__file__).parent / "data" / "zai-openapi.json"


class ZaiSpec:
    """Validates instances against the spec's component schemas, resolving ``$ref``s."""

    def __init__(self, path: Path) -> None:
        self.document: dict[str, Any] = json.loads(path.read_text())
        resource = Resource.from_contents(self.document, default_specification=DRAFT7)
        self._registry: Registry[Any] = Registry().with_resource(_SPEC_URI, resource)

    def schema(self, name: str) -> dict[str, Any]:
        """A deep copy of one component schema, free to patch; its refs still resolve."""
        return copy.deepcopy(self.document["components"]["schemas"][name])

    def validate(self, instance: Any, schema: str | dict[str, Any]) -> None:
        if isinstance(schema, str):
            schema = {"$ref": f"{_SPEC_URI}#/components/schemas/{schema}"}
        schema = _absolute_refs(schema)
        Draft7Validator(schema, registry=self._registry).validate(instance)


_SPEC_URI = "urn:zai-openapi"


def _absolute_refs(node: Any) -> Any:
    """Point local ``#/components/...`` refs of a patched copy at the registered spec."""
    if isinstance(node, dict):
        return {
            k: (f"{_SPEC_URI}{v}" if k == "$ref" and v.startswith("#") else _absolute_refs(v))
            for k, v in node.items()
        }
    if isinstance(node, list):
        return [_absolute_refs(v) for v in node]
    return node


@pytest.fixture(scope="session")
def zai_spec() -> ZaiSpec:
    """The Z.ai OpenAPI spec (tests/data/zai-openapi.json) as a validator."""
    return ZaiSpec(SPEC_PATH)
