"""The SSRF guard: which network addresses a webhook may reach, and DNS resolution that pins them."""

from __future__ import annotations

import ipaddress
import socket
from collections.abc import Callable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

#: Resolves (host, port) to IP address strings; `socket.getaddrinfo` by default, injectable in tests.
Resolver = Callable[[str, int], list[str]]

#: Host names refused without looking them up: they name the machine itself or a cloud's
#: instance-metadata service, whatever a local resolver or /etc/hosts says about them.
REFUSED_NAMES = frozenset(
    {
        "localhost",
        "localhost.localdomain",
        "ip6-localhost",
        "ip6-loopback",
        "metadata",
        "metadata.google.internal",
        "metadata.goog",
        "instance-data",
        "instance-data.ec2.internal",
    }
)

# Ranges that Python's `is_private`/`is_global` do not single out (or, before 3.11.8/3.12.2, got
# wrong), named so the refusal says which rule applied.
_CARRIER_GRADE_NAT = ipaddress.IPv4Network("100.64.0.0/10")
_UNIQUE_LOCAL = ipaddress.IPv6Network("fc00::/7")
_NAT64 = ipaddress.IPv6Network("64:ff9b::/96")
_IPV4_COMPATIBLE = ipaddress.IPv6Network("::/96")


def embedded_ipv4(address: ipaddress.IPv6Address) -> ipaddress.IPv4Address | None:
    """Return the IPv4 address an IPv6 address carries (mapped, compatible, 6to4, Teredo, NAT64).

    Such an address can reach the embedded IPv4 host, so it must be judged by that host.
    """
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if address.teredo is not None:
        return address.teredo[1]
    if address in _NAT64 or (address in _IPV4_COMPATIBLE and int(address) > 1):
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return None


def refusal_reason(address: IPAddress) -> str | None:
    """Say why a webhook may not connect to `address`, or return None when it is a public address.

    Pure function: it never touches the network.
    """
    if isinstance(address, ipaddress.IPv6Address):
        if address.scope_id:
            address = ipaddress.IPv6Address(str(address).split("%", 1)[0])
        inner = embedded_ipv4(address)
        if inner is not None:
            reason = refusal_reason(inner)
            if reason:
                return f"{reason} (embedded in {address})"
            if address.ipv4_mapped is not None:
                # A mapped address is the IPv4 host itself; other embeddings are also judged
                # as the IPv6 addresses they are, below.
                return None
    checks: list[tuple[bool, str]] = [
        (address.is_unspecified, "an unspecified address"),
        (address.is_loopback, "a loopback address"),
        (address.is_link_local, "a link-local address (this includes cloud metadata services)"),
        (address.is_multicast, "a multicast address"),
        (
            isinstance(address, ipaddress.IPv4Address) and address in _CARRIER_GRADE_NAT,
            "a carrier-grade NAT address",
        ),
        (
            isinstance(address, ipaddress.IPv6Address) and address in _UNIQUE_LOCAL,
            "a private (unique local) address",
        ),
        (address.is_reserved, "a reserved address"),
        (address.is_private, "a private address"),
        (not address.is_global, "not a globally routable address"),
    ]
    for refused, reason in checks:
        if refused:
            return f"{address} is {reason}"
    return None


def literal_address(host: str) -> IPAddress | None:
    """Return `host` as an IP address when it is one, including legacy IPv4 forms like `127.1`."""
    host = host.strip("[]")
    try:
        return ipaddress.ip_address(host)
    except ValueError:
        pass
    try:
        # inet_aton parses (never resolves) the numeric forms that resolvers also accept:
        # "127.1", "2130706433", "0x7f000001". A URL written that way reaches the same host.
        return ipaddress.IPv4Address(socket.inet_aton(host))
    except OSError:
        return None


def host_refusal(host: str) -> str | None:
    """Say why a URL host is refused before any lookup, or None when only DNS can tell."""
    name = host.rstrip(".").lower()
    if name in REFUSED_NAMES or name.endswith(".localhost"):
        return f"{host} names this machine or a metadata service"
    address = literal_address(name)
    return refusal_reason(address) if address is not None else None


def system_resolver(host: str, port: int) -> list[str]:
    """Resolve `host` with the system resolver, in its order of preference, without duplicates. An IP literal is
    its own address, written as `getaddrinfo` writes it (`inet_ntop`): no lookup. An IPv6 one with a zone still
    goes through it."""
    address = None if "[" in host else literal_address(host)  # getaddrinfo takes no brackets
    if isinstance(address, ipaddress.IPv4Address):
        return [str(address)]
    if address is not None and not address.scope_id:
        return [socket.inet_ntop(socket.AF_INET6, address.packed)]
    infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    return list(dict.fromkeys(str(info[4][0]) for info in infos))
