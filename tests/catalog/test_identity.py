"""Tests for identifier normalisation: one canonical string per remote URL and per image repository."""

from __future__ import annotations

import pytest

from mcp_optimizer.catalog import normalize_image, normalize_url

DIGEST = "sha256:" + "0123456789abcdef" * 4

URL_CASES = [
    # (input, canonical)
    ("https://mcp.example.com/mcp", "https://mcp.example.com/mcp"),
    ("  https://mcp.example.com/mcp\n", "https://mcp.example.com/mcp"),
    ("HTTPS://MCP.Example.COM/mcp", "https://mcp.example.com/mcp"),
    ("https://mcp.example.com/MCP", "https://mcp.example.com/MCP"),  # path case is significant
    ("https://mcp.example.com:443/mcp", "https://mcp.example.com/mcp"),
    ("http://mcp.example.com:80/mcp", "http://mcp.example.com/mcp"),
    ("http://mcp.example.com:443/mcp", "http://mcp.example.com:443/mcp"),  # not http's default
    ("https://mcp.example.com:80/mcp", "https://mcp.example.com:80/mcp"),
    ("http://localhost:8080", "http://localhost:8080"),
    ("http://localhost:", "http://localhost"),
    ("https://mcp.example.com/mcp/", "https://mcp.example.com/mcp"),
    ("https://mcp.example.com/mcp//", "https://mcp.example.com/mcp"),
    ("https://mcp.example.com/", "https://mcp.example.com"),
    ("https://mcp.example.com", "https://mcp.example.com"),
    ("https://mcp.example.com/v1/sse#section", "https://mcp.example.com/v1/sse"),
    ("https://mcp.example.com/mcp?tenant=a&x=1", "https://mcp.example.com/mcp?tenant=a&x=1"),
    ("https://mcp.example.com/?tenant=a", "https://mcp.example.com?tenant=a"),
    ("https://mcp.example.com/mcp?", "https://mcp.example.com/mcp"),
    ("https://user:secret@mcp.example.com/mcp", "https://mcp.example.com/mcp"),
    ("https://mcp.example.com./mcp", "https://mcp.example.com/mcp"),
    ("https://bücher.example/mcp", "https://xn--bcher-kva.example/mcp"),
    ("https://xn--bcher-kva.example/mcp", "https://xn--bcher-kva.example/mcp"),
    ("https://h.example/%7euser/%2f", "https://h.example/~user/%2F"),
    ("https://h.example/café", "https://h.example/caf%C3%A9"),
    ("http://[::1]:8080/mcp", "http://[::1]:8080/mcp"),
    ("http://[FE80::1]:80/", "http://[fe80::1]"),
    ("http://10.0.0.7:80/mcp", "http://10.0.0.7/mcp"),
]


@pytest.mark.parametrize(("url", "expected"), URL_CASES)
def test_normalize_url(url: str, expected: str) -> None:
    assert normalize_url(url) == expected


@pytest.mark.parametrize(("url", "expected"), URL_CASES)
def test_normalize_url_is_idempotent(url: str, expected: str) -> None:
    assert normalize_url(normalize_url(url)) == normalize_url(url)


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("", "empty"),
        ("   ", "empty"),
        ("mcp.example.com/mcp", "not an absolute http"),
        ("/mcp", "not an absolute http"),
        ("ftp://mcp.example.com", "not an absolute http"),
        ("ws://mcp.example.com", "not an absolute http"),
        ("http:///mcp", "no host"),
        ("http://:8080/mcp", "no host"),
        ("http://mcp.example.com:99999", "invalid port"),
        ("http://mcp.example.com:abc", "invalid port"),
        ("http://mcp.exa mple.com", "whitespace"),
        ("http://mcp.example.com/a\tb", "whitespace"),
        ("http://[::1/mcp", "malformed"),
        ("http://exa<mple.com", "invalid host"),
    ],
)
def test_normalize_url_rejects(url: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalize_url(url)


def test_normalize_url_rejects_non_string() -> None:
    with pytest.raises(ValueError, match="must be a string"):
        normalize_url(None)  # type: ignore[arg-type]


def test_url_spellings_of_one_server_match() -> None:
    spellings = [
        "https://mcp.example.com/mcp",
        "HTTPS://mcp.EXAMPLE.com:443/mcp/",
        " https://mcp.example.com/mcp#top ",
        "https://token@mcp.example.com/mcp",
    ]
    assert len({normalize_url(url) for url in spellings}) == 1


IMAGE_CASES = [
    # (input, canonical)
    ("nginx", "docker.io/library/nginx"),
    ("nginx:1.25", "docker.io/library/nginx"),
    ("nginx:latest", "docker.io/library/nginx"),
    (f"nginx@{DIGEST}", "docker.io/library/nginx"),
    (f"nginx:1.25@{DIGEST}", "docker.io/library/nginx"),
    ("library/nginx", "docker.io/library/nginx"),
    ("docker.io/nginx", "docker.io/library/nginx"),
    ("docker.io/library/nginx:1", "docker.io/library/nginx"),
    ("index.docker.io/nginx", "docker.io/library/nginx"),
    ("index.docker.io/library/nginx", "docker.io/library/nginx"),
    ("registry-1.docker.io/mcp/fetch:latest", "docker.io/mcp/fetch"),
    ("DOCKER.IO/mcp/fetch", "docker.io/mcp/fetch"),
    ("mcp/fetch", "docker.io/mcp/fetch"),
    ("mcp/fetch:0.1", "docker.io/mcp/fetch"),
    (
        "ghcr.io/stacklok/dockyard/npx/heroku-mcp-server:1.0.7",
        "ghcr.io/stacklok/dockyard/npx/heroku-mcp-server",
    ),
    ("GHCR.IO/stacklok/osv", "ghcr.io/stacklok/osv"),
    ("ghcr.io/stacklok/osv", "ghcr.io/stacklok/osv"),
    (f"ghcr.io/stacklok/osv@{DIGEST}", "ghcr.io/stacklok/osv"),
    ("localhost:5000/foo:1.0", "localhost:5000/foo"),
    ("localhost:5000/foo", "localhost:5000/foo"),
    ("LocalHost:5000/foo", "localhost:5000/foo"),
    ("localhost/foo:1", "localhost/foo"),
    ("myregistry.local:5000/team/app:v2", "myregistry.local:5000/team/app"),
    ("[::1]:5000/foo:1", "[::1]:5000/foo"),
    ("us-central1-docker.pkg.dev/p/repo/img:v1", "us-central1-docker.pkg.dev/p/repo/img"),
    ("quay.io/org/a.b_c__d-e--f:1", "quay.io/org/a.b_c__d-e--f"),
    ("  ghcr.io/x/y:1  ", "ghcr.io/x/y"),
    ("localhost:5000", "docker.io/library/localhost"),  # "5000" is a tag here, as in Docker
]


@pytest.mark.parametrize(("image", "expected"), IMAGE_CASES)
def test_normalize_image(image: str, expected: str) -> None:
    assert normalize_image(image) == expected


@pytest.mark.parametrize(("image", "expected"), IMAGE_CASES)
def test_normalize_image_is_idempotent(image: str, expected: str) -> None:
    assert normalize_image(normalize_image(image)) == normalize_image(image)


@pytest.mark.parametrize(
    ("image", "message"),
    [
        ("", "empty"),
        ("  ", "empty"),
        (":latest", "no repository name"),
        ("nginx:", "invalid tag"),
        ("nginx:bad/tag", "invalid registry"),  # a colon before a slash is a registry port
        ("nginx:-bad", "invalid tag"),
        ("nginx@sha256:abc", "invalid digest"),
        ("nginx@", "invalid digest"),
        ("Nginx", "invalid repository path component"),
        ("ghcr.io/Org/app", "invalid repository path component"),
        ("ghcr.io//app", "invalid repository path component"),
        ("ghcr.io/app/", "invalid repository path component"),
        ("ghcr.io/-app", "invalid repository path component"),
        ("bad_host.io/app", "invalid registry"),
        ("a" * 300, "longer than"),
        ("ghcr.io/a b", "invalid repository path component"),
    ],
)
def test_normalize_image_rejects(image: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        normalize_image(image)


def test_normalize_image_rejects_non_string() -> None:
    with pytest.raises(ValueError, match="must be a string"):
        normalize_image(42)  # type: ignore[arg-type]


def test_image_spellings_of_one_repository_match() -> None:
    spellings = [
        "mcp/fetch",
        "mcp/fetch:latest",
        "mcp/fetch:0.2.1",
        "docker.io/mcp/fetch",
        "index.docker.io/mcp/fetch:1",
        f"registry-1.docker.io/mcp/fetch@{DIGEST}",
    ]
    assert len({normalize_image(image) for image in spellings}) == 1


def test_different_registries_do_not_match() -> None:
    assert normalize_image("ghcr.io/x/y") != normalize_image("docker.io/x/y")
    assert normalize_image("localhost:5000/foo") != normalize_image("localhost:5001/foo")
