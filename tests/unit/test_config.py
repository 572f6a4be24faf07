"""Settings from the environment: defaults, and a message that says what was wrong."""

from __future__ import annotations

import pytest

from mcp_container_sandbox.settings import (
    DEFAULT_IMAGE,
    SandboxSettings,
    ServerSettings,
)


def test_defaults_are_the_contracts() -> None:
    settings = SandboxSettings.from_env({})
    assert (settings.image, settings.ttl_seconds, settings.sync_wait_seconds) == (DEFAULT_IMAGE, 7200, 3.0)
    assert settings.disk_limit_bytes == 2 * 1024**3 and settings.pool_size == 2


@pytest.mark.parametrize(
    ("environ", "says"),
    [
        ({"SANDBOX_TTL_SECONDS": "two hours"}, "SANDBOX_TTL_SECONDS must be a whole number"),
        ({"SANDBOX_TTL_SECONDS": "0"}, "SANDBOX_TTL_SECONDS must be at least 1"),
        ({"SANDBOX_SYNC_WAIT_SECONDS": "nan"}, "SANDBOX_SYNC_WAIT_SECONDS must be a number"),
        ({"SANDBOX_DISK_LIMIT_BYTES": "1000"}, "at least 16777216"),
        ({"SANDBOX_NAMESPACE": "a b"}, "SANDBOX_NAMESPACE may hold"),
        ({"SANDBOX_OUTPUT_LIMIT_BYTES": "10"}, "SANDBOX_OUTPUT_LIMIT_BYTES must be at least 1024"),
    ],
)
def test_a_bad_setting_is_refused_with_what_was_wrong(environ: dict[str, str], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        SandboxSettings.from_env(environ)


def test_a_disk_limit_of_zero_means_no_disk() -> None:
    assert SandboxSettings.from_env({"SANDBOX_DISK_LIMIT_BYTES": "0"}).disk_limit_bytes == 0


def test_a_stream_file_keeps_at_least_one_results_worth() -> None:
    settings = SandboxSettings.from_env({"SANDBOX_OUTPUT_LIMIT_BYTES": "200000", "SANDBOX_OUTPUT_FILE_MAX_BYTES": "65536"})
    assert settings.output_file_max_bytes == 200000


def test_the_default_image_comes_first_among_the_allowed() -> None:
    settings = SandboxSettings.from_env({"SANDBOX_IMAGE": "a:1", "SANDBOX_ALLOWED_IMAGES": "b:2, a:1 ,c:3"})
    assert settings.images == ("a:1", "b:2", "c:3")


def test_server_settings_read_lists_and_trim_the_base_url() -> None:
    settings = ServerSettings.from_env({"AUTH_TOKENS": "x, y,", "BASE_URL": "https://s.example/", "PORT": "8080"})
    assert settings.auth_tokens == ("x", "y") and settings.base_url == "https://s.example" and settings.port == 8080
    assert ServerSettings.from_env({}).host == "127.0.0.1"


@pytest.mark.parametrize("port", ["0", "70000", "http"])
def test_a_bad_port_is_refused(port: str) -> None:
    with pytest.raises(ValueError, match="PORT must be a port number"):
        ServerSettings.from_env({"PORT": port})


def test_oauth_settings_read_scopes_audiences_and_default_the_audience_to_the_mcp_urls() -> None:
    settings = ServerSettings.from_env({"BASE_URL": "https://s.example", "OAUTH_ISSUER": "https://idp.example/",
                                        "OAUTH_REQUIRED_SCOPES": "sandbox, read  write"})
    oauth = settings.oauth
    assert oauth.enabled and settings.authenticated and oauth.tenant_claim == "sub"
    assert oauth.required_scopes == ("sandbox", "read", "write")
    assert oauth.audiences(settings.base_url) == ("https://s.example/mcp", "https://s.example/", "https://s.example")
    explicit = ServerSettings.from_env({"BASE_URL": "https://s.example", "OAUTH_ISSUER": "https://idp.example",
                                        "OAUTH_AUDIENCE": "api://sandbox, https://s.example/mcp"})
    assert explicit.oauth.audiences(explicit.base_url) == ("api://sandbox", "https://s.example/mcp")
    assert not ServerSettings.from_env({}).authenticated


@pytest.mark.parametrize("environ, says", [
    ({"OAUTH_ISSUER": "https://idp.example"}, "needs BASE_URL"),
    ({"BASE_URL": "https://s.example", "OAUTH_ISSUER": "idp.example"}, "OAUTH_ISSUER must be an http"),
    ({"BASE_URL": "s.example"}, "BASE_URL must be an http"),
    ({"BASE_URL": "https://s.example", "OAUTH_ISSUER": "https://idp.example",
      "OAUTH_INTROSPECTION_URL": "https://idp.example/introspect"}, "needs OAUTH_CLIENT_ID and OAUTH_CLIENT_SECRET"),
    ({"BASE_URL": "https://s.example", "OAUTH_ISSUER": "https://a.example",
      "OAUTH_PROXY_UPSTREAM_ISSUER": "https://b.example"}, "not both"),
    ({"BASE_URL": "https://s.example", "OAUTH_PROXY_UPSTREAM_ISSUER": "https://b.example"},
     "needs OAUTH_PROXY_CLIENT_ID"),
    ({"BASE_URL": "https://s.example", "OAUTH_PROXY_UPSTREAM_ISSUER": "https://b.example",
      "OAUTH_PROXY_CLIENT_ID": "c", "OAUTH_PROXY_CLIENT_SECRET": "s"}, "needs OAUTH_ALLOWED_USERS"),
])
def test_oauth_settings_that_cannot_work_are_refused_saying_what_to_set(environ: dict[str, str], says: str) -> None:
    with pytest.raises(ValueError, match=says):
        ServerSettings.from_env(environ)
