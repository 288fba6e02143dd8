"""Which webhook URLs the server may call: a guard against server-side request forgery.

A subscription must not turn the server into a proxy to the cloud metadata service (which
hands out credentials) or to itself. URLs are checked when a subscription is made and again
before every attempt, against every address the host resolves to (DNS can change between the
two). Private networks (10/8, 192.168/16, ...) are allowed: receivers often live there.
"""

from __future__ import annotations

import ipaddress
import socket
from dataclasses import dataclass
from urllib.parse import urlsplit

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

# Hostnames of instance-metadata services, refused before any DNS lookup.
METADATA_HOSTNAMES = frozenset({
    "metadata", "metadata.google.internal", "metadata.goog", "metadata.azure.internal",
    "instance-data", "instance-data.ec2.internal", "metadata.tencentyun.com",
})  # fmt: skip
# Metadata addresses outside the link-local ranges: AWS over IPv6 (Nitro), Alibaba Cloud.
METADATA_ADDRESSES = frozenset(
    ipaddress.ip_address(a) for a in ("fd00:ec2::254", "100.100.100.200")
)
LINK_LOCAL = (ipaddress.ip_network("169.254.0.0/16"), ipaddress.ip_network("fe80::/10"))
# Never a meaningful destination: "this host" and multicast/broadcast.
NEVER = (
    ipaddress.ip_network("0.0.0.0/8"), ipaddress.ip_network("::/128"),
    ipaddress.ip_network("224.0.0.0/4"), ipaddress.ip_network("255.255.255.255/32"),
    ipaddress.ip_network("ff00::/8"),
)  # fmt: skip


class UrlRefused(ValueError):
    pass


@dataclass(frozen=True)
class UrlPolicy:
    allow_loopback: bool = False
    allow_link_local: bool = False
    """Also allows the cloud-metadata hosts and addresses."""


NAT64 = ipaddress.ip_network("64:ff9b::/96")
IPV4_COMPATIBLE = ipaddress.ip_network("::/96")


def _unmapped(address: IPAddress) -> IPAddress:
    """The IPv4 address an IPv6 address carries (mapped, NAT64, 6to4, compatible), if any:
    `::ffff:169.254.169.254` reaches the same service as `169.254.169.254`."""
    if not isinstance(address, ipaddress.IPv6Address):
        return address
    if address.ipv4_mapped is not None:
        return address.ipv4_mapped
    if address.sixtofour is not None:
        return address.sixtofour
    if (address in NAT64 or address in IPV4_COMPATIBLE) and int(address) > 1:
        return ipaddress.IPv4Address(int(address) & 0xFFFFFFFF)
    return address


def check_address(address: IPAddress, policy: UrlPolicy) -> None:
    address = _unmapped(address)
    if any(address in net for net in NEVER):
        raise UrlRefused(f"address {address} is not a webhook destination")
    if address.is_loopback and not policy.allow_loopback:
        raise UrlRefused(f"address {address} is loopback (set RLKEEL_WEBHOOK_ALLOW_LOOPBACK)")
    metadata = address in METADATA_ADDRESSES or any(address in net for net in LINK_LOCAL)
    if metadata and not policy.allow_link_local:
        raise UrlRefused(f"address {address} is link-local or a cloud metadata service "
                         "(set RLKEEL_WEBHOOK_ALLOW_LINK_LOCAL)")  # fmt: skip


def resolve(host: str, port: int) -> list[IPAddress]:
    try:
        infos = socket.getaddrinfo(host, port, type=socket.SOCK_STREAM)
    except socket.gaierror as exc:
        raise UrlRefused(f"host {host!r} does not resolve: {exc.strerror}") from None
    except (UnicodeError, ValueError):
        raise UrlRefused(f"host {host!r} is not a valid host name") from None
    return [ipaddress.ip_address(str(info[4][0]).split("%")[0]) for info in infos]


def check_url(url: str, policy: UrlPolicy) -> str:
    """The URL if the server may call it; else UrlRefused saying why."""
    try:
        parts = urlsplit(url)
        host = (parts.hostname or "").rstrip(".").lower()
    except ValueError as exc:  # e.g. an unclosed IPv6 bracket
        raise UrlRefused(f"not a URL: {exc}") from None
    if parts.scheme not in ("http", "https"):
        raise UrlRefused("a webhook URL is http:// or https://")
    if parts.username is not None or parts.password is not None:
        raise UrlRefused("a webhook URL carries no credentials; authenticate by signature")
    if not host:
        raise UrlRefused("a webhook URL needs a host")
    try:
        port = parts.port or (443 if parts.scheme == "https" else 80)
    except ValueError:
        raise UrlRefused("the port of the webhook URL is not a number in 1..65535") from None
    if host in METADATA_HOSTNAMES and not policy.allow_link_local:
        raise UrlRefused(f"host {host!r} is a cloud metadata service "
                         "(set RLKEEL_WEBHOOK_ALLOW_LINK_LOCAL)")  # fmt: skip
    try:
        addresses = [ipaddress.ip_address(host)]
    except ValueError:
        addresses = resolve(host, port)
    for address in addresses:
        check_address(address, policy)
    return url
