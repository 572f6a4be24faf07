"""create_container's arguments, each with what a model is told of it (sandboxes.py takes them)."""

from __future__ import annotations

from typing import Annotated

from pydantic import BaseModel, ConfigDict, Field

from ..sandbox import VolumeMount
from .area import NotBlank


class VolumeSpec(BaseModel):
    """One volume in create_container's volumes."""

    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, NotBlank] = Field(description="A volume of yours, from create_volume.", max_length=63)
    path: Annotated[str, NotBlank] = Field(description="Where it appears in the sandbox, an absolute path like '/data'.",
                                           max_length=255)
    read_only: bool = Field(default=False, description="true: the sandbox can read it but not write it.")

    def mount(self) -> VolumeMount:
        return VolumeMount(self.name, self.path, self.read_only)


class SecretSpec(BaseModel):
    """One secret in create_container's secrets."""

    model_config = ConfigDict(extra="forbid")
    name: Annotated[str, NotBlank] = Field(
        description="The secret's name on the server, like GITHUB_TOKEN; the sandbox gets that variable with a "
                    "placeholder, never the value.", max_length=64)
    host: Annotated[str, NotBlank] = Field(
        description="The one host whose HTTPS requests get the value, like api.github.com; it must be in "
                    "allow_domains.", max_length=253)
    header: Annotated[str, NotBlank] = Field(default="Authorization", description="The request header the value goes into.",
                                             max_length=64)
    format: str = Field(default="Bearer {value}", description="The header's value, with {value} where the secret goes.",
                        max_length=200)


Image = Annotated[
    str | None,
    Field(description="Container image; only images on the server's allow-list. Omit for the default (Alpine Linux).", max_length=300),
    NotBlank,
]
TtlSeconds = Annotated[
    int | None,
    Field(description="Lifetime in seconds, up to the server's maximum (2 hours by default); omit for the maximum.", ge=1),
]
Network = Annotated[
    bool | None,
    Field(description="false: no network at all inside the sandbox. Omit for the server's default "
                      "(the internet, but nothing of the host or the networks around it)."),
]
AllowDomains = Annotated[
    list[Annotated[str, Field(max_length=253), NotBlank]] | None,
    Field(description="Only these hosts may be reached, over HTTP(S) through the server's proxy (set in the "
                      "sandbox's http_proxy/https_proxy): exact names like 'api.github.com', or '*.example.org' "
                      "for its subdomains. Omit for the server's default."),
]
FromSnapshot = Annotated[
    str | None,
    Field(description="Start from this snapshot's files (from snapshot_container or list_snapshots), on its "
                      "image. Omit for a fresh sandbox.", max_length=100),
    NotBlank,
]
SnapshotOnExpiry = Annotated[
    bool,
    Field(description="true: when the sandbox's lifetime ends, its files are kept in a snapshot (reason "
                      "'expired') before it is destroyed; check_container then names it."),
]
IdempotencyKey = Annotated[
    str | None,
    Field(description="A key of the client's own (a UUID, say): asked again with the same key while the "
                      "sandbox lives, the same sandbox comes back instead of a second one. Use it when a "
                      "create may be retried.", max_length=128),
    NotBlank,
]
VolumesToMount = Annotated[
    list[VolumeSpec] | None,
    Field(description="Your volumes (create_volume) to mount, each {name, path, read_only}: their files are "
                      "shared with every sandbox that mounts them and outlive this one. Omit for none.",
          max_length=16),
]
Secrets = Annotated[
    list[SecretSpec] | None,
    Field(description="Secrets of the server's that the sandbox may use but never read: the egress proxy puts each "
                      "into the HTTPS requests to its host (needs allow_domains with that host). The sandbox's variable "
                      "of the same name holds a placeholder. Omit for none.", max_length=16),
]
