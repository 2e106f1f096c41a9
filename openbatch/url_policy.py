"""Which model-server URLs a tenant may name (DESIGN §12, docs/security.md).

Two layers, both pure and checked by the operator before a runner starts (the shim checks
the same at creation):
- **always refused**, whatever a platform allows: userinfo (`user:pw@host`), loopback,
  link-local, unspecified and cloud metadata addresses, `localhost` names, and numeric hosts
  that are not a canonical IP (`2130706433`, `0x7f.1`, `017700000001`: HTTP clients resolve
  them to loopback). The CRD refuses the static subset of this at admission (CEL).
- **allowed host patterns**: a direct `spec.modelServer.url` is allowed only when its host
  matches one of the namespace's patterns (`*.team-a.svc.cluster.local`); the default is
  none, so tenants use the routing table and `serviceRef` (a Service in their own
  namespace) only.

A host name is checked as text: a name that *resolves* to a forbidden address is the
runner egress policy's job (NetworkPolicy), not this module's.
"""

import ipaddress
import re
from collections.abc import Iterable
from fnmatch import fnmatchcase
from urllib.parse import urlsplit

METADATA_HOSTS = frozenset(
    {
        "metadata.google.internal",
        "metadata",
        "metadata.goog",
        "instance-data",  # EC2's resolvable name for 169.254.169.254
        "instance-data.ec2.internal",
    }
)
METADATA_ADDRESSES = frozenset(
    {
        ipaddress.ip_address("169.254.169.254"),  # AWS, GCP, Azure, OpenStack
        ipaddress.ip_address("fd00:ec2::254"),  # AWS IMDS over IPv6
        ipaddress.ip_address("100.100.100.200"),  # Alibaba Cloud
    }
)
# Digits, dots and hex markers only: a numeric host that is not a canonical dotted quad is
# still an address to `inet_aton` (and so to most HTTP clients).
_NUMERIC_HOST = re.compile(r"^(0x[0-9a-f]*|[0-9]+)(\.(0x[0-9a-f]*|[0-9]+))*\.?$")


def url_host(url: str) -> str:
    """The host of a URL, lower-cased, without brackets or a trailing dot."""
    host = urlsplit(url).hostname or ""
    return host.rstrip(".").lower()


def _refused_address(  # noqa: PLR0911  # one answer per kind of address
    address: ipaddress.IPv4Address | ipaddress.IPv6Address,
) -> str | None:
    if isinstance(address, ipaddress.IPv6Address) and address.ipv4_mapped is not None:
        return _refused_address(address.ipv4_mapped)
    if address in METADATA_ADDRESSES:
        return "a cloud metadata address"
    if address.is_loopback:
        return "a loopback address"
    if address.is_link_local:
        return "a link-local address"
    if address.is_unspecified:
        return "the unspecified address"
    if address.is_multicast:
        return "a multicast address"
    return None


def always_refused(url: str) -> str | None:  # noqa: PLR0911  # one answer per rule
    """Why no tenant may send requests to `url`, or None. Platform settings cannot lift it."""
    try:
        parts = urlsplit(url)
        host = url_host(url)
        _ = parts.port  # a malformed port raises
    except ValueError as exc:
        return f"{url!r} is not a valid URL: {exc}"
    if parts.scheme not in ("http", "https") or not host:
        return f"{url!r} must be an absolute http(s) URL"
    if "@" in parts.netloc:
        return "model-server URLs must not carry credentials (user:password@host)"
    if host == "localhost" or host.endswith(".localhost"):
        return f"host {host!r} is a loopback name"
    if host in METADATA_HOSTS:
        return f"host {host!r} is a cloud metadata service"
    try:
        address = ipaddress.ip_address(host)
    except ValueError:
        if _NUMERIC_HOST.match(host):
            return f"host {host!r} is a numeric address in a non-canonical form"
        return None
    reason = _refused_address(address)
    return f"host {host!r} is {reason}" if reason else None


def host_allowed(url: str, patterns: Iterable[str]) -> bool:
    """Whether the URL's host matches one of the patterns (`*` matches any characters,
    dots included; case-insensitive; `*` alone allows every host not always refused)."""
    host = url_host(url)
    return any(fnmatchcase(host, pattern.strip().rstrip(".").lower()) for pattern in patterns)


def check_direct_url(url: str, patterns: Iterable[str]) -> str | None:
    """Why a tenant's `spec.modelServer.url` is refused under `patterns`, or None."""
    reason = always_refused(url)
    if reason is not None:
        return reason
    patterns = [p for p in patterns if p.strip()]
    if not patterns:
        return (
            "direct model-server URLs are not allowed in this namespace; use the routing table "
            "(leave spec.modelServer out) or spec.modelServer.serviceRef"
        )
    if not host_allowed(url, patterns):
        return (
            f"host {url_host(url)!r} is not among this namespace's allowed model-server "
            f"hosts ({', '.join(patterns)})"
        )
    return None
