"""tools/schemas.py: tool schemas rewritten in the form every framework's converter takes whole."""

from __future__ import annotations

import copy

from mcp_container_sandbox.tools.schemas import portable


def test_optional_parameters_become_nullable_types_and_the_top_level_flag_goes() -> None:
    schema = {"type": "object", "additionalProperties": False, "required": ["id"], "properties": {
        "id": {"type": "string", "maxLength": 200, "description": "The id."},
        "name": {"anyOf": [{"type": "string", "maxLength": 128}, {"type": "null"}], "default": None,
                 "description": "A name."},
        "ttl": {"anyOf": [{"type": "null"}, {"type": "integer", "minimum": 1}], "default": None, "description": "TTL."},
        "either": {"anyOf": [{"type": "string"}, {"type": "integer"}], "description": "Left alone."},
        "nested": {"anyOf": [{"anyOf": [{"type": "string"}]}, {"type": "null"}], "default": None},
    }}
    before = copy.deepcopy(schema)
    out = portable(schema)
    assert schema == before  # the tool's own schema is not changed
    assert "additionalProperties" not in out and out["required"] == ["id"] and out["type"] == "object"
    assert out["properties"]["id"] == schema["properties"]["id"]
    assert out["properties"]["name"] == {"type": ["string", "null"], "maxLength": 128, "default": None,
                                         "description": "A name."}
    assert out["properties"]["ttl"] == {"type": ["integer", "null"], "minimum": 1, "default": None, "description": "TTL."}
    assert out["properties"]["either"] == schema["properties"]["either"]
    assert out["properties"]["nested"] == schema["properties"]["nested"]
    assert portable({"type": "object", "properties": {}}) == {"type": "object", "properties": {}}
