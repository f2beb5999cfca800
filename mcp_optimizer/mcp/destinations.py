"""Where the operator may connect: the destination rules, checked on every TCP connect.

A namespace user writes the URL of an MCPServer, and the operator (and the endpoint, which
forwards ``call_tool``) connects to it from its own network position. Without rules that URL
could name the apiserver, the cloud metadata service, the operator's own ports, or another
team's Service, and the status would show what answered. So the operator refuses:

* **loopback** (127.0.0.0/8, ::1, and the unspecified 0.0.0.0/::, which reach the local host);
* **link-local** and cloud **metadata** addresses (169.254.0.0/16, fe80::/10, fd00:ec2::254);
* **multicast/broadcast** (not a server);
* the **apiserver**: the names ``kubernetes[.default[.svc[.<domain>]]]``, the address in
  ``KUBERNETES_SERVICE_HOST`` and the address (and port) the operator's own client uses;
* the **operator's pod** (``POD_IP`` from the downward API, else what its hostname resolves to
  in a cluster);
* a **Service or pod in another namespace** than the MCPServer's: ``<svc>.<ns>.svc[.<domain>]``,
  ``<pod>.<ns>.pod.<domain>``, the short form ``<svc>.<ns>`` (recognised by resolving
  ``<svc>.<ns>.svc.<domain>``) and, in a cluster, a bare ``<svc>``, which the resolver expands
  to the *operator's* namespace.

An allow-list (``MCP_OPTIMIZER_ALLOWED_DESTINATIONS``) admits exceptions: a host name (or
``*.suffix``) passes the name rules, an address in a listed network passes the address rules.
A broad network never admits the apiserver's or the operator's own address: only an entry that
is exactly that address does.

**When it is checked.** :meth:`DestinationPolicy.resolve` runs inside the HTTP client's network
backend (:mod:`mcp_optimizer.mcp.client`) for every TCP connection: the name is resolved once,
every address is checked, and the connection goes to a checked address, never to a second
resolution. A name that resolves to a harmless address when the MCPServer is created and to
127.0.0.1 later (DNS rebinding) is refused at the connect that would have reached 127.0.0.1.
The same code checks ``tools/list`` and forwarded ``tools/call``.
"""

from __future__ import annotations

import contextlib
import ipaddress
import os
import socket
from collections.abc import Awaitable, Callable, Iterable, Sequence
from dataclasses import dataclass, field
from pathlib import Path
from typing import Final

import anyio

__all__ = ["DestinationPolicy", "DestinationRefused", "parse_allow_list"]

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network
Resolver = Callable[[str, int], Awaitable[Sequence[str]]]

ALLOW_SETTING: Final = "MCP_OPTIMIZER_ALLOWED_DESTINATIONS"
_METADATA_ADDRESSES: Final = frozenset({ipaddress.ip_address("fd00:ec2::254")})
_SERVICE_ACCOUNT_NAMESPACE: Final = Path("/var/run/secrets/kubernetes.io/serviceaccount/namespace")
_RESOLV_CONF: Final = Path("/etc/resolv.conf")
_DEFAULT_CLUSTER_DOMAIN: Final = "cluster.local"


class DestinationRefused(Exception):
    """A connection the destination rules forbid. ``rule`` is a short name (``loopback``, ...)."""

    def __init__(self, host: str, rule: str, detail: str) -> None:
        super().__init__(
            f"destination {host} refused by the rule '{rule}': {detail}; an entry in {ALLOW_SETTING} can admit it"
        )
        self.host = host
        self.rule = rule


def parse_allow_list(entries: Iterable[str]) -> tuple[tuple[str, ...], tuple[IPNetwork, ...]]:
    """(host names, networks) of an allow-list: ``10.0.0.0/8``, ``::1``, ``mcp.example.com``, ``*.tools.svc``.

    Raises ValueError naming the first entry that is neither.
    """
    hosts: list[str] = []
    networks: list[IPNetwork] = []
    for raw in entries:
        entry = raw.strip().lower().rstrip(".")
        if not entry:
            continue
        try:
            networks.append(ipaddress.ip_network(entry, strict=False))
            continue
        except ValueError:
            pass
        name = entry[2:] if entry.startswith("*.") else entry
        if not name or "/" in name or ":" in name or not all(label for label in name.split(".")):
            raise ValueError(f"{ALLOW_SETTING}: {raw!r} is neither an address, a network (CIDR) nor a host name")
        hosts.append(entry)
    return tuple(hosts), tuple(networks)


def _address(text: str) -> IPAddress | None:
    try:
        address = ipaddress.ip_address(text.strip("[]").split("%", 1)[0])
    except ValueError:
        return None
    # An IPv4-mapped IPv6 address (::ffff:127.0.0.1) reaches the IPv4 address it maps.
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return address.ipv4_mapped
    return address


@dataclass(frozen=True)
class DestinationPolicy:
    """The rules above, with what the operator knows about its own cluster."""

    allowed_hosts: tuple[str, ...] = ()
    allowed_networks: tuple[IPNetwork, ...] = ()
    #: Addresses of the apiserver, with the port when only that port is the apiserver (None: any).
    apiserver_endpoints: frozenset[tuple[IPAddress, int | None]] = frozenset()
    #: Host names that are the apiserver besides ``kubernetes[.default[.svc...]]``.
    apiserver_hosts: frozenset[str] = frozenset()
    own_addresses: frozenset[IPAddress] = frozenset()
    #: The operator's namespace; set only in a cluster (a bare name resolves into it there).
    operator_namespace: str | None = None
    cluster_domain: str = _DEFAULT_CLUSTER_DOMAIN
    #: Resolves (host, port) to addresses: the system resolver, unless a test stands in for the
    #: cluster's DNS (which a development machine does not have).
    resolver: Resolver | None = field(default=None, compare=False, repr=False)

    @classmethod
    def allowing(cls, entries: Iterable[str]) -> DestinationPolicy:
        """The rules with these allow-list entries and nothing known about a cluster."""
        hosts, networks = parse_allow_list(entries)
        return cls(allowed_hosts=hosts, allowed_networks=networks)

    @classmethod
    def from_environment(
        cls,
        allowed: Sequence[str] = (),
        *,
        apiserver_url: str | None = None,
        environ: dict[str, str] | None = None,
    ) -> DestinationPolicy:
        """The policy for this process: the allow-list plus what the environment says about the cluster.

        ``apiserver_url``: the URL the operator's own Kubernetes client talks to (its address and
        port are the apiserver too, e.g. outside a cluster).
        """
        env = dict(os.environ) if environ is None else environ
        hosts, networks = parse_allow_list(allowed)
        endpoints: set[tuple[IPAddress, int | None]] = set()
        apiserver_hosts: set[str] = set()
        in_cluster = bool(env.get("KUBERNETES_SERVICE_HOST"))
        if (service_host := _address(env.get("KUBERNETES_SERVICE_HOST", ""))) is not None:
            endpoints.add((service_host, None))
        if apiserver_url:
            from urllib.parse import urlsplit

            parts = urlsplit(apiserver_url)
            if parts.hostname:
                port = parts.port or (443 if parts.scheme == "https" else 80)
                if (address := _address(parts.hostname)) is not None:
                    endpoints.add((address, port))
                else:
                    apiserver_hosts.add(parts.hostname.lower().rstrip("."))
        own: set[IPAddress] = set()
        if (pod_ip := _address(env.get("POD_IP", ""))) is not None:
            own.add(pod_ip)
        namespace = None
        domain = _DEFAULT_CLUSTER_DOMAIN
        if in_cluster:
            # kubelet maps the pod's hostname to its IP in /etc/hosts.
            with contextlib.suppress(OSError):
                own.update(a for a in map(_address, socket.gethostbyname_ex(socket.gethostname())[2]) if a)
            namespace = env.get("POD_NAMESPACE") or _read_text(_SERVICE_ACCOUNT_NAMESPACE)
            domain = _cluster_domain(_read_text(_RESOLV_CONF) or "") or domain
        return cls(
            allowed_hosts=hosts,
            allowed_networks=networks,
            apiserver_endpoints=frozenset(endpoints),
            apiserver_hosts=frozenset(apiserver_hosts),
            own_addresses=frozenset(own),
            operator_namespace=namespace or None,
            cluster_domain=domain,
        )

    # ------------------------------------------------------------------------------ names

    def host_allowed(self, host: str) -> bool:
        host = host.lower().rstrip(".")
        for entry in self.allowed_hosts:
            if entry.startswith("*."):
                if host.endswith(entry[1:]):
                    return True
            elif host == entry:
                return True
        return False

    def check_name(self, host: str, namespace: str | None) -> None:
        """The name rules (no DNS). ``namespace``: the MCPServer's; None skips the namespace rule."""
        name = host.lower().rstrip(".")
        if _address(name) is not None or self.host_allowed(name):
            return
        labels = name.split(".")
        if name in self.apiserver_hosts or (
            labels[0] == "kubernetes"
            and (len(labels) == 1 or labels[1] == "default")
            and (len(labels) <= 2 or labels[2] == "svc")
        ):
            raise DestinationRefused(host, "apiserver", f"{name} is the Kubernetes apiserver")
        target = self._cluster_namespace(labels, fqdn=host.endswith("."))
        if target is not None and namespace is not None and target != namespace:
            raise DestinationRefused(
                host,
                "other-namespace",
                f"{name} is in namespace {target}, and an MCPServer may only reach its own namespace ({namespace})",
            )

    def _cluster_namespace(self, labels: list[str], *, fqdn: bool) -> str | None:
        """The namespace a cluster DNS name points into, if it is one."""
        for kind in ("svc", "pod"):
            for index in range(len(labels) - 1, 1, -1):
                if labels[index] == kind and ".".join(labels[index + 1 :]) in ("", self.cluster_domain):
                    return labels[index - 1]
        if len(labels) == 1 and not fqdn and self.operator_namespace is not None:
            return self.operator_namespace  # the resolver's first search domain
        return None

    # ---------------------------------------------------------------------------- addresses

    def check_address(self, host: str, address: IPAddress, port: int) -> None:
        """The address rules for one resolved address of ``host``."""
        exact = any(net.num_addresses == 1 and address in net for net in self.allowed_networks)
        listed = exact or any(address in net for net in self.allowed_networks)
        what = address if str(address) == host.strip("[]") else f"{host} resolves to {address}, which"
        if not exact and (
            (address, port) in self.apiserver_endpoints or (address, None) in self.apiserver_endpoints
        ):
            raise DestinationRefused(host, "apiserver", f"{what} is the Kubernetes apiserver")
        if not exact and address in self.own_addresses:
            raise DestinationRefused(host, "operator-pod", f"{what} is the operator's own pod")
        if listed:
            return
        if address.is_loopback or address.is_unspecified:
            raise DestinationRefused(host, "loopback", f"{what} is a loopback address")
        if address in _METADATA_ADDRESSES:
            raise DestinationRefused(host, "metadata", f"{what} is a cloud metadata address")
        if address.is_link_local:
            raise DestinationRefused(host, "link-local", f"{what} is link-local (cloud metadata lives there)")
        if address.is_multicast or address == ipaddress.IPv4Address("255.255.255.255"):
            raise DestinationRefused(host, "not-unicast", f"{what} is a multicast or broadcast address")

    async def resolve(self, host: str, port: int, namespace: str | None) -> list[str]:
        """Check ``host`` and every address it resolves to; return the addresses to connect to.

        Raises :class:`DestinationRefused`, or :class:`OSError` when the name does not resolve.
        """
        self.check_name(host, namespace)
        literal = _address(host)
        if literal is not None:
            addresses = [literal]
        else:
            addresses = await self._lookup(host, port)
            if not addresses:
                raise OSError(f"{host} resolves to no address")
            await self._check_short_service_name(host, addresses, namespace)
        # Every address must pass: a name that answers with one public and one internal
        # address is refused, not tried address by address.
        for address in addresses:
            self.check_address(host, address, port)
        return [str(address) for address in addresses]

    async def _check_short_service_name(self, host: str, addresses: list[IPAddress], namespace: str | None) -> None:
        """``<svc>.<ns>`` reaches Service svc in namespace ns through the cluster's search list."""
        labels = host.lower().split(".")
        if (
            self.operator_namespace is None
            or namespace is None
            or host.endswith(".")
            or len(labels) != 2
            or labels[1] == namespace
            or self.host_allowed(host)
        ):
            return
        try:
            expanded = await self._lookup(f"{host}.svc.{self.cluster_domain}.", 0)
        except OSError:
            return  # not a Service name
        if expanded and set(expanded) & set(addresses):
            raise DestinationRefused(
                host,
                "other-namespace",
                f"{host.lower()} is Service {labels[0]} in namespace {labels[1]}, and an MCPServer may only "
                f"reach its own namespace ({namespace})",
            )

    async def _lookup(self, host: str, port: int) -> list[IPAddress]:
        if self.resolver is not None:
            return [a for a in map(_address, await self.resolver(host, port)) if a is not None]
        infos = await anyio.getaddrinfo(host, port, type=socket.SOCK_STREAM)
        found: list[IPAddress] = []
        for *_, sockaddr in infos:
            address = _address(str(sockaddr[0]))
            if address is not None and address not in found:
                found.append(address)
        return found


def _read_text(path: Path) -> str | None:
    try:
        return path.read_text().strip()
    except OSError:
        return None


def _cluster_domain(resolv_conf: str) -> str | None:
    """The cluster domain from a pod's resolv.conf search list (``svc.<domain>``)."""
    for line in resolv_conf.splitlines():
        fields = line.split()
        if fields and fields[0] == "search":
            for domain in fields[1:]:
                if domain.startswith("svc."):
                    return domain[4:].rstrip(".")
    return None
