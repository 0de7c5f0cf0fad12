"""SSRF: hostile destinations are refused with BLOCKED_DESTINATION before any connection.

Every case runs through `Egress.send` with the recording connector and the fake resolver of
tests/support/network.py, so a broken guard could at most knock on loopback: each case asserts
its reason AND that the connector was asked for zero connections. A representative subset goes
through the real EvaluateNode RPC of an in-process sidecar with the default egress policy, and
allow-listed loopback controls show the same machinery does connect when it should.

Hostile destinations, by table:

    ENCODED_IPV4      127.0.0.1, 10.x, 169.254.169.254, 0.0.0.0 ... in decimal, octal, hex,
                      short and mixed spellings, with trailing dots
    IPV6_FORMS        bracketed loopback, ULA, link-local, site-local, multicast, IPv4-mapped,
                      -compatible, 6to4, NAT64 (/96 and the local-use /48), Teredo
    REOPENED_WRAPPERS the same embedded targets when the operator allow-listed the wrapping
                      prefix (NAT64, 6to4 ...): the embedded address is still judged
    PLATFORMS         every cloud/hosting platform's special-purpose address (metadata, wire
                      server, DNS, time ...: AWS, Azure, GCP, Oracle, Alibaba, Tencent, IBM,
                      OpenStack, Scaleway, Akamai ...) as IPv4, decimal, IPv4-mapped and NAT64,
                      under the default policy and under an allow-list of everything
    NAMES             cloud metadata names and localhost, in several spellings
    RESOLVED          names the fake DNS resolves to forbidden addresses (one public + one
                      private answer included: refused whole)
    TRICKS            userinfo, fragment, backslash, unicode dots, full-width digits, NUL
    SCHEMES, PORTS    http without an allow-list, ftp/file/gopher/..., invalid ports
    CONNECTOR_HOSTS   hosts outside the connector's own host list
    REDIRECTS         a real loopback upstream answering 3xx to forbidden targets
    REBINDING         a name whose second answer is forbidden
"""

from __future__ import annotations

import asyncio
import ipaddress
from collections.abc import Callable
from dataclasses import dataclass, field
from typing import Any
from urllib.parse import urlsplit

import grpc
import pytest

from sidecar.core.model import Reason
from sidecar.core.model.exchange import HttpResponse, OutboundRequest, SendError, SendOptions
from sidecar.egress.policy import FORBIDDEN, METADATA_NAMES, SENSITIVE, EgressPolicy
from tests.support.calls import error, evaluate, register, verdict
from tests.support.loopback import HOST, LOOPBACK_ALLOW, LOOPBACK_POLICY
from tests.support.network import Network, recording_egress
from tests.support.sidecars import InProcessSidecar
from tests.support.upstreams import Upstream, closed_port

DEFAULT_POLICY = EgressPolicy()
OPTIONS = SendOptions(timeout_seconds=5.0, max_response_bytes=1024 * 1024)
FOLLOW = SendOptions(
    timeout_seconds=5.0,
    max_response_bytes=1024 * 1024,
    follow_redirects=True,
    credential_headers=frozenset({"authorization"}),
)
# Where a broken guard would knock if it let a loopback case through: nothing listens there.
CLOSED = closed_port()
METADATA_PATH = "/latest/meta-data/iam/security-credentials/"


@dataclass(frozen=True)
class Hostile:
    """One hostile destination and the circumstances it is tried in."""

    url: str
    policy: EgressPolicy = DEFAULT_POLICY
    options: SendOptions = OPTIONS
    dns: dict[str, Any] = field(default_factory=dict)


def case(
    case_id: str,
    url: str,
    *,
    policy: EgressPolicy = DEFAULT_POLICY,
    allowed_hosts: tuple[str, ...] = (),
    dns: dict[str, Any] | None = None,
) -> Any:
    """A table row; `dns` holds the fake resolver's answers the row needs."""
    options = SendOptions(5.0, 1024 * 1024, allowed_hosts=allowed_hosts)
    return pytest.param(Hostile(url, policy, options, dict(dns or {})), id=case_id)


ENCODED_IPV4 = [
    # 127.0.0.1
    case("loopback", "https://127.0.0.1/"),
    case("loopback-decimal", "https://2130706433/"),
    case("loopback-octal", "https://0177.0.0.1/"),
    case("loopback-octal-padded", "https://0177.0000.0000.0001/"),
    case("loopback-octal-whole", "https://017700000001/"),
    case("loopback-hex-octet", "https://0x7f.0.0.1/"),
    case("loopback-hex-octets-upper", "https://0X7F.0X0.0X0.0X1/"),
    case("loopback-hex-whole", "https://0x7f000001/"),
    case("loopback-hex-zero-padded", "https://0x00007f.1/"),
    case("loopback-short-2", "https://127.1/"),
    case("loopback-short-3", "https://127.0.1/"),
    case("loopback-short-hex", "https://0x7f.1/"),
    case("loopback-zero-padded-decimal", "https://127.000.000.001/"),
    case("loopback-trailing-dot", "https://127.0.0.1./"),
    case("loopback-two-trailing-dots", "https://127.0.0.1../"),
    case("loopback-other-address", "https://127.0.0.2/"),
    case("loopback-top-of-range", "https://127.255.255.254/"),
    # 10.0.0.1
    case("private-10", "https://10.0.0.1/"),
    case("private-10-decimal", "https://167772161/"),
    case("private-10-octal", "https://012.0.0.1/"),
    case("private-10-hex", "https://0xa.0.0.1/"),
    case("private-10-hex-whole", "https://0x0a000001/"),
    case("private-10-short", "https://10.1/"),
    case("private-10-trailing-dot", "https://10.255.255.255./"),
    # 169.254.169.254
    case("metadata", "https://169.254.169.254" + METADATA_PATH),
    case("metadata-decimal", "https://2852039166/"),
    case("metadata-octal", "https://0251.0376.0251.0376/"),
    case("metadata-octal-whole", "https://025177524776/"),
    case("metadata-hex", "https://0xa9.0xfe.0xa9.0xfe/"),
    case("metadata-hex-whole", "https://0xa9fea9fe/"),
    case("metadata-short-3", "https://169.254.43518/"),
    case("metadata-short-2", "https://169.16689662/"),
    case("metadata-mixed", "https://0251.0xfe.43518/"),
    case("metadata-trailing-dot", "https://169.254.169.254./"),
    case("metadata-ecs-task", "https://169.254.170.2/v2/credentials"),
    # 0.0.0.0 (Linux connects it to the local host)
    case("unspecified", "https://0.0.0.0/"),
    case("unspecified-zero", "https://0/"),
    case("unspecified-hex", "https://0x0/"),
    case("unspecified-octal", "https://00/"),
    case("unspecified-short", "https://0.0/"),
    # the rest of the deny table
    case("private-192-168", "https://192.168.0.1/"),
    case("private-192-168-decimal", "https://3232235521/"),
    case("private-172-16", "https://172.16.0.1/"),
    case("cgnat", "https://100.64.0.1/"),
    case("metadata-alibaba", "https://100.100.100.200/latest/meta-data/"),
    case("metadata-oracle-ietf", "https://192.0.0.192/"),
    case("multicast", "https://224.0.0.1/"),
    case("broadcast", "https://255.255.255.255/"),
    case("reserved-240", "https://240.0.0.1/"),
    case("documentation", "https://192.0.2.1/"),
    case("benchmarking", "https://198.18.0.1/"),
]

IPV6_FORMS = [
    case("v6-loopback", "https://[::1]/"),
    case("v6-loopback-long", "https://[0:0:0:0:0:0:0:1]/"),
    case("v6-unspecified", "https://[::]/"),
    case("v6-ula-fd", "https://[fd00::1]/"),
    case("v6-ula-fc", "https://[fc00::1]/"),
    case("v6-link-local", "https://[fe80::1]/"),
    case("v6-link-local-zone", "https://[fe80::1%25eth0]/"),
    case("v6-site-local", "https://[fec0::1]/"),
    case("v6-multicast", "https://[ff02::1]/"),
    case("v6-metadata-aws", "https://[fd00:ec2::254]/"),
    case("v6-metadata-gcp", "https://[fd20:ce::254]/"),
    case("v6-documentation", "https://[2001:db8::1]/"),
    case("mapped-loopback", "https://[::ffff:127.0.0.1]/"),
    case("mapped-loopback-hex", "https://[::ffff:7f00:1]/"),
    case("mapped-loopback-long", "https://[0:0:0:0:0:ffff:7f00:0001]/"),
    case("mapped-metadata", "https://[::ffff:169.254.169.254]/"),
    case("mapped-metadata-hex", "https://[::ffff:a9fe:a9fe]/"),
    case("mapped-private", "https://[::ffff:10.0.0.1]/"),
    case("translated-loopback", "https://[::ffff:0:7f00:1]/"),
    case("compatible-loopback", "https://[::127.0.0.1]/"),
    case("compatible-metadata", "https://[::169.254.169.254]/"),
    case("compatible-metadata-hex", "https://[::a9fe:a9fe]/"),
    case("6to4-metadata", "https://[2002:a9fe:a9fe::]/"),
    case("6to4-loopback", "https://[2002:7f00:1::1]/"),
    case("6to4-private", "https://[2002:a00:1::1]/"),
    case("nat64-metadata", "https://[64:ff9b::a9fe:a9fe]/"),
    case("nat64-metadata-dotted", "https://[64:ff9b::169.254.169.254]/"),
    case("nat64-loopback", "https://[64:ff9b::7f00:1]/"),
    case("nat64-private", "https://[64:ff9b::10.0.0.1]/"),
    case("nat64-local-use-metadata", "https://[64:ff9b:1::a9fe:a9fe]/"),
    case("teredo-metadata", "https://[2001:0:4136:e378:8000:63bf:5601:5601]/"),
    case("teredo-loopback", "https://[2001:0:4136:e378:8000:63bf:80ff:fffe]/"),
]

# An operator on an IPv6-only cluster may open the NAT64 or 6to4 prefix for public APIs; what
# those addresses carry inside must still be judged.
WRAPPERS_OPEN = EgressPolicy(
    allow_cidrs=(
        "::ffff:0:0/96",
        "::/96",
        "2002::/16",
        "64:ff9b::/96",
        "64:ff9b:1::/48",
        "2001::/32",
        "0.0.0.0/0",  # contains loopback and link-local, but does not name them
    )
)
REOPENED_WRAPPERS = [
    case("opened-mapped-metadata", "https://[::ffff:169.254.169.254]/", policy=WRAPPERS_OPEN),
    case("opened-mapped-loopback", "https://[::ffff:127.0.0.1]/", policy=WRAPPERS_OPEN),
    case("opened-compatible-metadata", "https://[::a9fe:a9fe]/", policy=WRAPPERS_OPEN),
    case("opened-6to4-metadata", "https://[2002:a9fe:a9fe::1]/", policy=WRAPPERS_OPEN),
    case("opened-6to4-loopback", "https://[2002:7f00:1::]/", policy=WRAPPERS_OPEN),
    case("opened-nat64-metadata", "https://[64:ff9b::a9fe:a9fe]/", policy=WRAPPERS_OPEN),
    case("opened-nat64-loopback", "https://[64:ff9b::127.0.0.1]/", policy=WRAPPERS_OPEN),
    case("opened-nat64-48-metadata", "https://[64:ff9b:1::169.254.169.254]/", policy=WRAPPERS_OPEN),
    case(
        "opened-teredo-metadata",
        "https://[2001:0:5ef5:79fd:0:63bf:5601:5601]/",
        policy=WRAPPERS_OPEN,
    ),
    case("opened-all-v4-metadata", "https://169.254.169.254/", policy=WRAPPERS_OPEN),
    case("opened-all-v4-loopback", "https://127.0.0.1/", policy=WRAPPERS_OPEN),
]

# The platforms' special-purpose addresses, one row per address the policy names (its comments
# cite each vendor's page). A block (IBM's service networks) is tried by a sample inside it.
PLATFORM_ADDRESSES = [
    ("169.254.169.254", "instance metadata: AWS, Azure, GCP, Oracle, IBM, DigitalOcean, Hetzner"),
    ("fd00:ec2::254", "AWS instance metadata, IPv6"),
    ("169.254.169.253", "AWS Route 53 Resolver"),
    ("fd00:ec2::253", "AWS Route 53 Resolver, IPv6"),
    ("169.254.169.123", "Amazon Time Sync Service"),
    ("fd00:ec2::123", "Amazon Time Sync Service, IPv6"),
    ("169.254.170.2", "AWS ECS task credentials"),
    ("169.254.170.23", "AWS EKS Pod Identity Agent"),
    ("fd00:ec2::23", "AWS EKS Pod Identity Agent, IPv6"),
    ("169.254.169.250", "AWS Windows activation (KMS)"),
    ("169.254.169.251", "AWS Windows activation (KMS)"),
    ("168.63.129.16", "Azure WireServer (public range)"),
    ("fd20:ce::254", "GCP metadata, IPv6"),
    ("192.0.0.192", "Oracle Cloud Classic metadata"),
    ("100.100.100.200", "Alibaba Cloud metadata"),
    ("169.254.0.23", "Tencent Cloud metadata"),
    ("161.26.0.10", "IBM Cloud service network: DNS (public range)"),
    ("161.26.0.6", "IBM Cloud service network: NTP (public range)"),
    ("166.8.0.1", "IBM Cloud private service endpoints (public range)"),
    ("fe80::a9fe:a9fe", "OpenStack metadata, IPv6"),
    ("169.254.42.42", "Scaleway metadata"),
    ("fd00:42::42", "Scaleway metadata, IPv6"),
    ("fd00:a9fe:a9fe::1", "Akamai / Linode metadata, IPv6"),
]
# An operator who opened everything: the platforms' addresses must stay closed all the same.
EVERYTHING_OPEN = EgressPolicy(allow_cidrs=("0.0.0.0/0", "::/0"))


def spellings(address: str) -> list[tuple[str, str]]:
    """(form, URL host) for each way an address may be written: IPv6 as itself; IPv4 also as a
    decimal number, IPv4-mapped IPv6 and NAT64 (RFC 6052)."""
    parsed = ipaddress.ip_address(address)
    if parsed.version == 6:
        return [("v6", f"[{address}]")]
    return [
        ("v4", address),
        ("decimal", str(int(parsed))),
        # Canonical (hex) forms: refused for what they embed, not for an odd spelling.
        ("mapped", f"[{ipaddress.IPv6Address(f'::ffff:{address}')}]"),
        ("nat64", f"[{ipaddress.IPv6Address(f'64:ff9b::{address}')}]"),
    ]


PLATFORMS = [
    case(f"platform-{address}-{form}{suffix}", f"https://{host}/", policy=policy)
    for address, _ in PLATFORM_ADDRESSES
    for form, host in spellings(address)
    for suffix, policy in (("", DEFAULT_POLICY), ("-all-open", EVERYTHING_OPEN))
]

NAMES = [
    case("name-gcp", "https://metadata.google.internal/computeMetadata/v1/"),
    case("name-gcp-upper-trailing-dot", "https://METADATA.GOOGLE.INTERNAL./"),
    case("name-gcp-two-trailing-dots", "https://metadata.google.internal../"),
    case("name-gcp-goog", "https://metadata.goog/"),
    case("name-bare-metadata", "https://metadata/"),
    case("name-some-metadata-internal", "https://foo.metadata.internal/"),
    case("name-aws", "https://instance-data/latest/"),
    case("name-aws-ec2-internal", "https://instance-data.ec2.internal/"),
    case("name-azure", "https://metadata.azure.com/"),
    case("name-equinix", "https://metadata.platformequinix.com/"),
    case("name-packet", "https://metadata.packet.net/"),
    case("name-ibm", "https://api.metadata.cloud.ibm.com/metadata/v1/instance"),
    case("name-tencent", "https://metadata.tencentyun.com/latest/meta-data/"),
    case("name-tencent-upper-dot", "https://METADATA.TENCENTYUN.COM./"),
    case("name-kubernetes-bare", "https://kubernetes/api"),
    case("name-kubernetes", "https://kubernetes.default/api"),
    case("name-kubernetes-svc", "https://kubernetes.default.svc/api"),
    case("name-localhost", "https://localhost/"),
    case("name-localhost-upper-dot", "https://LOCALHOST./"),
    case("name-sub-localhost", "https://api.localhost/"),
    case("name-deep-localhost", "https://a.b.localhost/"),
]

PUBLIC = "93.184.215.14"  # a public-looking answer; only the fake resolver ever gives it
RESOLVED = [
    case("dns-private", "https://orders.example.test/", dns={"orders.example.test": ["10.0.0.5"]}),
    case(
        "dns-metadata", "https://meta.example.test/", dns={"meta.example.test": ["169.254.169.254"]}
    ),
    case("dns-loopback", "https://loop.example.test/", dns={"loop.example.test": ["127.0.0.1"]}),
    case("dns-v6-loopback", "https://loop6.example.test/", dns={"loop6.example.test": ["::1"]}),
    case("dns-unspecified", "https://zero.example.test/", dns={"zero.example.test": ["0.0.0.0"]}),
    case("dns-cgnat", "https://cgnat.example.test/", dns={"cgnat.example.test": ["100.64.1.1"]}),
    case("dns-alibaba", "https://ali.example.test/", dns={"ali.example.test": ["100.100.100.200"]}),
    case("dns-aws-v6", "https://aws6.example.test/", dns={"aws6.example.test": ["fd00:ec2::254"]}),
    case(
        "dns-azure-wireserver",
        "https://wire.example.test/machine/?comp=goalstate",
        dns={"wire.example.test": ["168.63.129.16"]},
    ),
    case(
        "dns-public-and-wireserver",
        "https://wire-mixed.example.test/",
        dns={"wire-mixed.example.test": [PUBLIC, "168.63.129.16"]},
    ),
    case("dns-ibm-dns", "https://ibm.example.test/", dns={"ibm.example.test": ["161.26.0.7"]}),
    case(
        "dns-aws-resolver-v6",
        "https://r53.example.test/",
        dns={"r53.example.test": ["fd00:ec2::253"]},
    ),
    case(
        "dns-openstack-v6",
        "https://os6.example.test/",
        dns={"os6.example.test": ["fe80::a9fe:a9fe%2"]},
    ),
    case("dns-ula", "https://ula.example.test/", dns={"ula.example.test": ["fd12:3456::1"]}),
    case(
        "dns-mapped-metadata",
        "https://mapped.example.test/",
        dns={"mapped.example.test": ["::ffff:169.254.169.254"]},
    ),
    case(
        "dns-nat64",
        "https://nat64.example.test/",
        dns={"nat64.example.test": ["64:ff9b::a9fe:a9fe"]},
    ),
    case(
        "dns-6to4",
        "https://sixtofour.example.test/",
        dns={"sixtofour.example.test": ["2002:a9fe:a9fe::1"]},
    ),
    case("dns-link-local-v6", "https://ll.example.test/", dns={"ll.example.test": ["fe80::1%1"]}),
    case(
        "dns-public-and-private",
        "https://mixed.example.test/",
        dns={"mixed.example.test": [PUBLIC, "10.0.0.1"]},
    ),
    case(
        "dns-public-and-metadata",
        "https://mixed-meta.example.test/",
        dns={"mixed-meta.example.test": [PUBLIC, "169.254.169.254"]},
    ),
    case(
        "dns-allowed-and-metadata",
        "http://mixed-loop.example.test/",
        policy=EgressPolicy(
            allow_cidrs=("127.0.0.1/32",), allow_http_hosts=("mixed-loop.example.test",)
        ),
        dns={"mixed-loop.example.test": ["127.0.0.1", "169.254.169.254"]},
    ),
    case(
        "dns-nip-io-metadata",
        "https://169.254.169.254.nip.io/",
        dns={"169.254.169.254.nip.io": ["169.254.169.254"]},
    ),
    case(
        "dns-localhost-localdomain",
        "https://localhost.localdomain/",
        dns={"localhost.localdomain": ["127.0.0.1"]},
    ),
    case("dns-ip6-localhost", "https://ip6-localhost/", dns={"ip6-localhost": ["::1"]}),
    case(
        "dns-kubernetes-fqdn",
        "https://kubernetes.default.svc.cluster.local/api",
        dns={"kubernetes.default.svc.cluster.local": ["10.96.0.1"]},
    ),
]

# A connector registered for api.example.com, and an operator who opened 127.0.0.1 over http:
# the URL's own parser tricks must not reach 127.0.0.1.
OPENED_LOOPBACK = EgressPolicy(
    allow_cidrs=("127.0.0.1/32",), allow_http_hosts=("127.0.0.1", "api.example.com")
)
API_ONLY = ("api.example.com",)
TRICKS = [
    case("userinfo-host-then-loopback", f"http://api.example.com@127.0.0.1:{CLOSED}/"),
    case(
        "userinfo-on-allowed-loopback",
        f"http://api.example.com@127.0.0.1:{CLOSED}/",
        policy=OPENED_LOOPBACK,
        allowed_hosts=API_ONLY,
    ),
    case("userinfo-metadata", "https://api.example.com@169.254.169.254/"),
    case("userinfo-empty", "https://:@169.254.169.254/"),
    case("userinfo-port-lookalike", "https://api.example.com:443@169.254.169.254/"),
    case("userinfo-v6", "https://user@[::1]/"),
    case("backslash-userinfo", "https://api.example.com\\@169.254.169.254/"),
    case("fragment-at-loopback", f"http://127.0.0.1:{CLOSED}#@api.example.com/"),
    case("fragment-at-loopback-https", f"https://127.0.0.1:{CLOSED}#@api.example.com/"),
    case(
        "fragment-at-on-allowed-loopback",
        f"http://127.0.0.1:{CLOSED}#@api.example.com/",
        policy=OPENED_LOOPBACK,
        allowed_hosts=API_ONLY,
    ),
    case("query-at-loopback", f"https://127.0.0.1:{CLOSED}?@api.example.com/"),
    case("ideographic-dots", "https://169\u3002254\u3002169\u3002254/"),
    case(
        "full-width-digits",
        "https://\uff11\uff16\uff19.\uff12\uff15\uff14.\uff11\uff16\uff19.\uff12\uff15\uff14/",
    ),
    case("percent-nul-in-host", "https://169.254.169.254%00.example.com/"),
    case("encoded-dot-in-host", "https://169.254.169%2e254/"),
    case("no-host", "https:///latest/meta-data/"),
    case("single-slash", "https:/169.254.169.254/"),
]

SCHEMES = [
    case("http-without-allow-list", "http://api.example.com/", dns={"api.example.com": [PUBLIC]}),
    case("http-upper-case", "HTTP://api.example.com/", dns={"api.example.com": [PUBLIC]}),
    case("http-metadata", "http://169.254.169.254" + METADATA_PATH),
    case("ftp", "ftp://api.example.com/file", dns={"api.example.com": [PUBLIC]}),
    case("file", "file:///etc/passwd"),
    case("file-with-host", "file://localhost/etc/passwd"),
    case("gopher", f"gopher://127.0.0.1:{CLOSED}/_GET%20/"),
    case("dict", f"dict://127.0.0.1:{CLOSED}/info"),
    case("ldap", "ldap://169.254.169.254/"),
    case("ws", "ws://api.example.com/", dns={"api.example.com": [PUBLIC]}),
    case("jar", "jar:https://api.example.com!/"),
    case("data", "data:text/plain,hello"),
]

PORTS = [
    case("port-too-large", "https://api.example.com:99999/"),
    case("port-negative", "https://api.example.com:-1/"),
    case("port-twice", "https://169.254.169.254:443:80/"),
    case("port-not-a-number", "https://api.example.com:http/"),
    case("port-metadata-80", "https://169.254.169.254:80/"),
    case("port-redis-v6-loopback", "https://[::1]:6379/"),
    case("port-docker-private", "https://10.0.0.1:2375/containers/json"),
    case("port-kubelet", "https://10.0.0.1:10250/pods"),
    case("port-ssh-loopback", "https://127.0.0.1:22/"),
    case("port-unspecified", f"https://0:{CLOSED}/"),
]

CONNECTOR_HOSTS = [
    case(
        "suffix-lookalike",
        "https://api.example.com.evil.test/",
        allowed_hosts=API_ONLY,
        dns={"api.example.com.evil.test": [PUBLIC]},
    ),
    case(
        "wildcard-lookalike",
        "https://evilexample.com/",
        allowed_hosts=("*.example.com",),
        dns={"evilexample.com": [PUBLIC]},
    ),
    case(
        "wildcard-needs-a-label",
        "https://example.com/",
        allowed_hosts=("*.example.com",),
        dns={"example.com": [PUBLIC]},
    ),
    case(
        "allowed-loopback-other-host",
        f"http://127.0.0.1:{CLOSED}/",
        policy=OPENED_LOOPBACK,
        allowed_hosts=API_ONLY,
    ),
]

HOSTILE = [
    *ENCODED_IPV4,
    *IPV6_FORMS,
    *REOPENED_WRAPPERS,
    *PLATFORMS,
    *NAMES,
    *RESOLVED,
    *TRICKS,
    *SCHEMES,
    *PORTS,
    *CONNECTOR_HOSTS,
]


def get(url: str, *headers: tuple[str, str]) -> OutboundRequest:
    return OutboundRequest("GET", url, tuple(headers), None)


def send(
    network: Network,
    request: OutboundRequest,
    options: SendOptions = OPTIONS,
    policy: EgressPolicy = LOOPBACK_POLICY,
    **connector_options: Any,
) -> HttpResponse | SendError:
    """Send through a recording egress; the response, or the SendError raised."""

    async def main() -> HttpResponse | SendError:
        async with recording_egress(network, policy, **connector_options) as egress:
            try:
                return await egress.send(request, options)
            except SendError as failure:
                return failure

    return asyncio.run(main())


def blocked(result: HttpResponse | SendError) -> bool:
    return isinstance(result, SendError) and result.reason is Reason.BLOCKED_DESTINATION


def describe(result: HttpResponse | SendError) -> str:
    if isinstance(result, SendError):
        return f"{result.reason}: {result.message}"
    return f"HTTP {result.status}"


# ---------------------------------------------------------------------------------------------
# Egress.send: every table row
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("hostile", HOSTILE)
def test_hostile_destination_is_blocked_without_any_connection(
    hostile: Hostile, network: Network
) -> None:
    network.dns.update(hostile.dns)

    result = send(network, get(hostile.url), hostile.options, hostile.policy)

    assert blocked(result), describe(result)
    assert network.connections == []
    assert set(network.lookups) <= set(hostile.dns), "only the case's own names are looked up"


@pytest.mark.parametrize("hostile", NAMES[:3] + RESOLVED[:3])
def test_deny_listed_names_are_never_looked_up_and_other_names_once(
    hostile: Hostile, network: Network
) -> None:
    # Names on the deny list are refused by name: the resolver is never asked. Names that
    # resolve to a forbidden address are refused after exactly one lookup.
    network.dns.update(hostile.dns)

    result = send(network, get(hostile.url), hostile.options, hostile.policy)

    assert blocked(result), describe(result)
    assert len(network.lookups) == (1 if hostile.dns else 0)


def test_allow_listed_loopback_control_connects_and_answers(
    network: Network, upstream: Upstream
) -> None:
    result = send(network, get(upstream.url("/json")))

    assert isinstance(result, HttpResponse), describe(result)
    assert result.status == 200
    assert network.connections == [(HOST, upstream.port)]


def test_allow_listed_name_control_connects_to_the_address_it_resolved_to(
    network: Network, upstream: Upstream
) -> None:
    network.dns["orders.example.test"] = [HOST]
    policy = EgressPolicy(allow_cidrs=("127.0.0.1/32",), allow_http_hosts=("orders.example.test",))

    result = send(network, get(f"http://orders.example.test:{upstream.port}/json"), policy=policy)

    assert isinstance(result, HttpResponse), describe(result)
    assert result.status == 200
    assert network.lookups == ["orders.example.test"]
    assert network.connections == [(HOST, upstream.port)]


# ---------------------------------------------------------------------------------------------
# DNS rebinding
# ---------------------------------------------------------------------------------------------

REBINDING_NAME = "rebind.example.test"
REBINDING_POLICY = EgressPolicy(allow_cidrs=("127.0.0.1/32",), allow_http_hosts=(REBINDING_NAME,))


REBINDING_ANSWERS = [
    pytest.param(["169.254.169.254"], id="metadata"),
    pytest.param(["10.0.0.1"], id="private"),
    pytest.param(["::1"], id="v6-loopback"),
    pytest.param(["127.0.0.1", "169.254.169.254"], id="allowed-plus-metadata"),
]


@pytest.mark.parametrize("second_answer", REBINDING_ANSWERS)
def test_dns_rebinding_connects_only_to_the_judged_address_and_refuses_the_second_answer(
    network: Network, upstream: Upstream, second_answer: list[str]
) -> None:
    network.dns[REBINDING_NAME] = [[HOST], second_answer]
    url = f"http://{REBINDING_NAME}:{upstream.port}/json"

    async def twice() -> tuple[HttpResponse | SendError, HttpResponse | SendError]:
        # No DNS cache and no keep-alive: the second request must look the name up again.
        async with recording_egress(
            network, REBINDING_POLICY, dns_cache_seconds=0, keepalive_seconds=0
        ) as egress:
            results: list[HttpResponse | SendError] = []
            for _ in range(2):
                try:
                    results.append(await egress.send(get(url), OPTIONS))
                except SendError as failure:
                    results.append(failure)
            return results[0], results[1]

    first, second = asyncio.run(twice())

    assert isinstance(first, HttpResponse), describe(first)
    assert first.status == 200
    assert blocked(second), describe(second)
    assert network.lookups == [REBINDING_NAME, REBINDING_NAME]
    # The one connection went to the address the guard judged on the first lookup.
    assert network.connections == [(HOST, upstream.port)]
    assert upstream.hits("/json") == 1


# ---------------------------------------------------------------------------------------------
# Redirects to forbidden targets (a real loopback upstream answering 3xx)
# ---------------------------------------------------------------------------------------------

REDIRECT_TARGETS = [
    pytest.param(302, "http://169.254.169.254" + METADATA_PATH, {}, id="metadata"),
    pytest.param(301, "https://169.254.169.254/computeMetadata/v1/", {}, id="metadata-https"),
    pytest.param(307, "http://100.100.100.200/latest/meta-data/", {}, id="metadata-alibaba"),
    pytest.param(302, "http://168.63.129.16/machine/?comp=goalstate", {}, id="azure-wireserver"),
    pytest.param(302, "http://169.254.170.23/v1/credentials", {}, id="eks-pod-identity"),
    pytest.param(308, "http://metadata.google.internal/computeMetadata/v1/", {}, id="gcp-name"),
    pytest.param(302, "//169.254.169.254/latest/", {}, id="scheme-relative-metadata"),
    pytest.param(302, "http://[::ffff:169.254.169.254]/", {}, id="mapped-metadata"),
    pytest.param(302, "http://[64:ff9b::a9fe:a9fe]/", {}, id="nat64-metadata"),
    pytest.param(303, "http://10.0.0.1/admin", {}, id="private-10"),
    pytest.param(302, "http://192.168.1.1/", {}, id="private-192-168"),
    pytest.param(302, "http://[::1]:{port}/json", {}, id="v6-loopback-same-port"),
    pytest.param(302, "http://127.0.0.2:{port}/json", {}, id="loopback-outside-the-allow-list"),
    pytest.param(302, "http://0.0.0.0:{port}/json", {}, id="unspecified-same-port"),
    pytest.param(302, "http://2130706433:{port}/json", {}, id="allowed-address-in-decimal"),
    pytest.param(302, "http://127.1:{port}/json", {}, id="allowed-address-short"),
    pytest.param(302, "http://127.0.0.1.:{port}/json", {}, id="allowed-address-trailing-dot"),
    pytest.param(302, "http://localhost:{port}/json", {}, id="localhost-same-port"),
    pytest.param(302, "http://user:pw@127.0.0.1:{port}/json", {}, id="userinfo-same-origin"),
    pytest.param(302, "file:///etc/passwd", {}, id="file"),
    pytest.param(302, "gopher://127.0.0.1:{port}/_GET", {}, id="gopher"),
    pytest.param(302, "ftp://127.0.0.1:{port}/", {}, id="ftp"),
    pytest.param(302, "http://[::ffff:127.0.0.1]:{port}/json", {}, id="allowed-address-mapped"),
    pytest.param(
        302,
        "http://evil.example.test/",
        {"evil.example.test": [PUBLIC]},
        id="http-to-a-public-name",
    ),
    pytest.param(
        302,
        "https://internal.example.test/",
        {"internal.example.test": ["10.1.2.3"]},
        id="name-resolving-private",
    ),
    pytest.param(
        302,
        "http://rebound.example.test:{port}/json",
        {"rebound.example.test": ["169.254.169.254"]},
        id="name-resolving-metadata",
    ),
]


@pytest.mark.parametrize(("status", "location", "dns"), REDIRECT_TARGETS)
def test_redirect_to_a_forbidden_target_is_blocked_and_never_connected(
    network: Network, upstream: Upstream, status: int, location: str, dns: dict[str, Any]
) -> None:
    network.dns.update(dns)
    target = location.format(port=upstream.port)
    upstream.respond("/hop", status=status, json={}, headers={"Location": target})

    result = send(network, get(upstream.url("/hop"), ("Authorization", "Bearer t")), FOLLOW)

    assert blocked(result), describe(result)
    assert upstream.hits("/hop") == 1
    assert network.connections == [(HOST, upstream.port)]


def test_every_hop_is_judged_again(network: Network, upstream: Upstream) -> None:
    upstream.respond("/first", status=302, json={}, headers={"Location": "/second"})
    upstream.respond("/second", status=307, json={}, headers={"Location": "/third"})
    upstream.respond("/third", status=302, json={}, headers={"Location": "http://169.254.169.254/"})

    result = send(network, get(upstream.url("/first")), FOLLOW)

    assert blocked(result), describe(result)
    assert [upstream.hits(path) for path in ("/first", "/second", "/third")] == [1, 1, 1]
    assert set(network.connections) == {(HOST, upstream.port)}


def test_redirect_to_another_host_than_the_connectors_is_blocked(
    network: Network, upstream: Upstream
) -> None:
    # The operator opened 127.0.0.1 and also api.example.com; the connector is 127.0.0.1's.
    network.dns["api.example.com"] = [HOST]
    policy = EgressPolicy(
        allow_cidrs=("127.0.0.1/32",), allow_http_hosts=("127.0.0.1", "api.example.com")
    )
    options = SendOptions(5.0, 1024 * 1024, allowed_hosts=(HOST,), follow_redirects=True)
    target = f"http://api.example.com:{upstream.port}/json"
    upstream.respond("/hop", status=302, json={}, headers={"Location": target})

    result = send(network, get(upstream.url("/hop")), options, policy)

    assert blocked(result), describe(result)
    assert network.lookups == []
    assert network.connections == [(HOST, upstream.port)]


def test_redirects_are_not_followed_by_default(network: Network, upstream: Upstream) -> None:
    upstream.respond("/hop", status=302, json={}, headers={"Location": "http://169.254.169.254/"})

    result = send(network, get(upstream.url("/hop")))

    assert isinstance(result, HttpResponse), describe(result)
    assert result.status == 302
    assert network.connections == [(HOST, upstream.port)]


# ---------------------------------------------------------------------------------------------
# The allow-list re-opens ranges, not the sensitive addresses inside them
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("allow", "url", "dns"),
    [
        pytest.param("0.0.0.0/0", "https://169.254.169.254/", {}, id="everything-v4-metadata"),
        pytest.param("0.0.0.0/0", "https://127.0.0.1/", {}, id="everything-v4-loopback"),
        pytest.param("::/0", "https://[::1]/", {}, id="everything-v6-loopback"),
        pytest.param("::/0", "https://[fe80::1]/", {}, id="everything-v6-link-local"),
        pytest.param("127.0.0.0/8", "https://[::1]/", {}, id="v4-loopback-is-not-v6"),
        pytest.param("100.64.0.0/10", "https://100.100.100.200/", {}, id="cgnat-alibaba"),
        pytest.param("fd00::/8", "https://[fd00:ec2::254]/", {}, id="ula-aws-metadata"),
        pytest.param(
            "10.0.0.0/8",
            "https://meta.example.test/",
            {"meta.example.test": ["10.0.0.1", "169.254.169.254"]},
            id="private-name-with-metadata",
        ),
    ],
)
def test_broad_allow_list_entries_keep_loopback_link_local_and_metadata_closed(
    network: Network, allow: str, url: str, dns: dict[str, Any]
) -> None:
    network.dns.update(dns)

    result = send(network, get(url), policy=EgressPolicy(allow_cidrs=(allow,)))

    assert blocked(result), describe(result)
    assert network.connections == []


@pytest.mark.parametrize(
    ("allow", "url", "dns"),
    [
        pytest.param("169.254.0.0/16", "https://169.254.169.254/", {}, id="link-local-range"),
        pytest.param("fc00::/7", "https://[fd20:ce::254]/", {}, id="ula-range-gcp-v6"),
        pytest.param(
            "10.96.0.0/12",
            "https://kubernetes.default.svc.cluster.local/api",
            {"kubernetes.default.svc.cluster.local": ["10.96.0.1"]},
            id="service-range-api-server",
        ),
    ],
)
def test_allow_listing_a_range_does_not_reopen_the_metadata_service_inside_it(
    network: Network, allow: str, url: str, dns: dict[str, Any]
) -> None:
    network.dns.update(dns)

    result = send(network, get(url), policy=EgressPolicy(allow_cidrs=(allow,)))

    assert blocked(result), describe(result)
    assert network.non_loopback_attempts() == []


# ---------------------------------------------------------------------------------------------
# Through the real EvaluateNode RPC, default egress policy
# ---------------------------------------------------------------------------------------------

RPC_CASES = [
    pytest.param("https://169.254.169.254" + METADATA_PATH, {}, id="metadata"),
    pytest.param("https://2852039166/latest/", {}, id="metadata-decimal"),
    pytest.param("https://0x7f.1/orders", {}, id="loopback-hex-short"),
    pytest.param("https://[::ffff:169.254.169.254]/", {}, id="mapped-metadata"),
    pytest.param("https://[64:ff9b::a9fe:a9fe]/", {}, id="nat64-metadata"),
    pytest.param("https://[2002:a9fe:a9fe::]/", {}, id="6to4-metadata"),
    pytest.param("https://[fd00::1]/orders", {}, id="ula"),
    pytest.param("https://168.63.129.16/machine/?comp=goalstate", {}, id="azure-wireserver"),
    pytest.param("https://[fd00:ec2::23]/v1/credentials", {}, id="eks-pod-identity-v6"),
    pytest.param("https://metadata.google.internal/computeMetadata/v1/", {}, id="gcp-name"),
    pytest.param("https://localhost/orders", {}, id="localhost"),
    pytest.param("https://10.0.0.1/orders", {}, id="private-10"),
    pytest.param("http://127.0.0.1:{closed}/orders", {}, id="http-loopback"),
    pytest.param("http://api.example.com/orders", {"api.example.com": [PUBLIC]}, id="http"),
    pytest.param(
        "https://orders.example.test/orders/{{order_number}}",
        {"orders.example.test": ["10.0.0.5"]},
        id="name-resolving-private",
    ),
    pytest.param(
        "https://mixed.example.test/orders",
        {"mixed.example.test": [PUBLIC, "169.254.169.254"]},
        id="name-resolving-public-and-metadata",
    ),
]


@pytest.fixture
def default_policy_sidecar(sidecar_factory: Callable[..., InProcessSidecar]) -> InProcessSidecar:
    """An in-process sidecar with the default egress policy (public https only)."""
    return sidecar_factory(egress_allow_cidrs=[], egress_allow_http_hosts=[])


@pytest.mark.parametrize(("url", "dns"), RPC_CASES)
def test_evaluate_node_answers_blocked_destination_without_connecting(
    default_policy_sidecar: InProcessSidecar, network: Network, url: str, dns: dict[str, Any]
) -> None:
    network.dns.update(dns)
    stub = default_policy_sidecar.stub
    register(stub, "hostile", url.replace("{closed}", str(CLOSED)))

    response = evaluate(stub, "hostile", {"order_number": "A-1"}, explain=True)

    assert verdict(response) == error("BLOCKED_DESTINATION"), response.message
    assert (response.target, response.http_status) == ("error", 0)
    assert network.connections == []


@pytest.mark.parametrize(
    "url",
    [
        "https://api.example.com@169.254.169.254/",
        "http://127.0.0.1#@api.example.com/",
        "ftp://api.example.com/",
        "file:///etc/passwd",
        "https://metadata.google.internal{{path}}/",
    ],
    ids=["userinfo", "fragment", "ftp", "file", "placeholder-in-host"],
)
def test_registration_refuses_urls_that_hide_their_destination(
    default_policy_sidecar: InProcessSidecar, network: Network, url: str
) -> None:
    with pytest.raises(grpc.RpcError) as caught:
        register(default_policy_sidecar.stub, "hostile", url)

    assert caught.value.code() == grpc.StatusCode.INVALID_ARGUMENT
    assert network.connections == []


def test_evaluate_node_redirect_to_metadata_is_blocked_over_the_wire(
    sidecar_factory: Callable[..., InProcessSidecar], network: Network, upstream: Upstream
) -> None:
    sidecar = sidecar_factory()  # loopback opened, as in the other e2e tests
    upstream.respond(
        "/hop", status=302, json={}, headers={"Location": "http://169.254.169.254/latest/"}
    )
    register(sidecar.stub, "hops", upstream.url("/hop"), follow_redirects=True)

    response = evaluate(sidecar.stub, "hops")

    assert verdict(response) == error("BLOCKED_DESTINATION"), response.message
    assert upstream.hits("/hop") == 1
    assert network.connections == [(HOST, upstream.port)]


def test_evaluate_node_loopback_control_succeeds_when_allow_listed(
    sidecar_factory: Callable[..., InProcessSidecar], network: Network, upstream: Upstream
) -> None:
    sidecar = sidecar_factory(**LOOPBACK_ALLOW)
    register(sidecar.stub, "control", upstream.url("/json"))

    response = evaluate(sidecar.stub, "control")

    assert verdict(response) == ("OUTCOME_MATCHED", "REASON_BRANCH_MATCHED")
    assert response.http_status == 200
    assert network.connections == [(HOST, upstream.port)]


# ---------------------------------------------------------------------------------------------
# The platforms' special addresses: every entry closed under any wider allow-list, open when named
# ---------------------------------------------------------------------------------------------

# Generic ranges rather than one platform's service: their own rows are in the tables above.
GENERIC_SENSITIVE = {"127.0.0.0/8", "::1/128", "169.254.0.0/16", "fe80::/10"}
# The ranges an operator may open for in-cluster services (169.254.0.0/16, fc00::/7 ...).
OPENABLE_RANGES = [str(network) for network, _ in FORBIDDEN] + sorted(GENERIC_SENSITIVE)


def test_every_special_address_the_policy_names_has_a_platform_row() -> None:
    tried = [ipaddress.ip_address(address) for address, _ in PLATFORM_ADDRESSES]
    untried = [
        f"{network} ({label})"
        for network, label in SENSITIVE
        if str(network) not in GENERIC_SENSITIVE and not any(a in network for a in tried)
    ]

    assert untried == []


def test_every_metadata_name_is_tried_by_a_hostile_row() -> None:
    hosts = {(urlsplit(p.values[0].url).hostname or "").rstrip(".") for p in HOSTILE}

    assert sorted(METADATA_NAMES - hosts) == []


@pytest.mark.parametrize(
    ("address", "platform"), PLATFORM_ADDRESSES, ids=[a for a, _ in PLATFORM_ADDRESSES]
)
def test_platform_address_opens_only_for_an_entry_that_names_it(
    address: str, platform: str
) -> None:
    parsed = ipaddress.ip_address(address)
    itself = ipaddress.ip_network(address)
    # Wider than any block the policy names (IBM's /14 and /16, link-local /16, ULA /7).
    wider = itself.supernet(new_prefix=12 if parsed.version == 4 else 7)
    everything = "0.0.0.0/0" if parsed.version == 4 else "::/0"
    around = [r for r in OPENABLE_RANGES if parsed in ipaddress.ip_network(r)]
    allow_lists = [(), (everything,), (str(wider),), *((r,) for r in around)]

    refused = [
        allow
        for allow in allow_lists
        if not EgressPolicy(allow_cidrs=allow).judge_address(parsed).allowed
    ]
    named = EgressPolicy(allow_cidrs=(str(itself),)).judge_address(parsed)
    listed_name = EgressPolicy().judge_address(parsed, host_listed=True)

    assert refused == allow_lists, f"{platform}: re-opened by an entry that does not name it"
    assert named.allowed, f"{platform}: {named.reason}"
    assert listed_name.allowed, platform


# ---------------------------------------------------------------------------------------------
# A refusal names the setting that would allow the destination, and nothing secret
# ---------------------------------------------------------------------------------------------

CANARY = "canary-secret-7f3a"
FIXES = [
    pytest.param(
        f"http://api.example.com/orders?key={CANARY}",
        {"api.example.com": [PUBLIC]},
        ("plain http", "add api.example.com to egress_allow_http_hosts"),
        id="http",
    ),
    pytest.param(
        f"https://10.0.0.5/orders?key={CANARY}",
        {},
        ("10.0.0.5 is private (RFC 1918)", "add it (or its range) to egress_allow_cidrs"),
        id="private-range",
    ),
    pytest.param(
        "https://[fd12:3456::1]/",
        {},
        ("unique local", "add it (or its range) to egress_allow_cidrs"),
        id="ula-range",
    ),
    pytest.param(
        f"https://168.63.129.16/machine/?comp={CANARY}",
        {},
        ("Azure WireServer", "add 168.63.129.16/32 itself to egress_allow_cidrs"),
        id="azure-wireserver",
    ),
    pytest.param(
        "https://169.254.169.254/latest/",
        {},
        ("cloud metadata", "add 169.254.169.254/32 itself to egress_allow_cidrs"),
        id="metadata",
    ),
    pytest.param(
        "https://161.26.0.10/",
        {},
        ("IBM Cloud", "a range no wider than 161.26.0.0/16"),
        id="ibm-block",
    ),
    pytest.param(
        "https://[::ffff:169.254.169.254]/",
        {},
        ("embeds 169.254.169.254", "add 169.254.169.254/32 itself to egress_allow_cidrs"),
        id="mapped-metadata",
    ),
    pytest.param(
        f"https://metadata.google.internal/computeMetadata/v1/?{CANARY}",
        {},
        ("cloud metadata name", "add metadata.google.internal itself to egress_allow_hosts"),
        id="metadata-name",
    ),
    pytest.param(
        "https://localhost/",
        {},
        ("loopback", "add localhost itself to egress_allow_hosts"),
        id="localhost",
    ),
    pytest.param(
        f"https://orders.example.test/{CANARY}",
        {"orders.example.test": ["10.0.0.5"]},
        (
            "'orders.example.test' resolves to a refused address: 10.0.0.5 is private",
            "egress_allow_cidrs, or add orders.example.test to egress_allow_hosts",
        ),
        id="name-resolving-private",
    ),
    pytest.param(
        "https://wire.example.test/",
        {"wire.example.test": [PUBLIC, "168.63.129.16"]},
        ("168.63.129.16", "or add wire.example.test to egress_allow_hosts"),
        id="name-resolving-wireserver",
    ),
]


@pytest.mark.parametrize(("url", "dns", "phrases"), FIXES)
def test_refusal_names_the_setting_that_would_allow_it_and_no_secret(
    network: Network, url: str, dns: dict[str, Any], phrases: tuple[str, str]
) -> None:
    network.dns.update(dns)
    request = get(url, ("Authorization", f"Bearer {CANARY}"), ("X-Api-Key", CANARY))

    result = send(network, request, policy=DEFAULT_POLICY)

    assert blocked(result), describe(result)
    assert isinstance(result, SendError)
    what, fix = phrases
    assert what in result.message
    assert "; to allow it, " in result.message
    assert fix in result.message.split("; to allow it, ", 1)[1]
    assert CANARY not in f"{result.message} {result!r}"
    assert network.connections == []


def test_evaluate_node_refusal_message_names_the_setting(
    default_policy_sidecar: InProcessSidecar, network: Network
) -> None:
    register(default_policy_sidecar.stub, "private", "https://10.0.0.5/orders")

    response = evaluate(default_policy_sidecar.stub, "private", explain=True)

    assert verdict(response) == error("BLOCKED_DESTINATION"), response.message
    assert "10.0.0.5" in response.message
    assert "egress_allow_cidrs" in response.message
    assert network.connections == []


# ---------------------------------------------------------------------------------------------
# The count the issue asks for
# ---------------------------------------------------------------------------------------------


def hostile_destinations() -> set[str]:
    """Every distinct hostile destination this module tries (with its circumstances)."""
    found = {f"{p.values[0].url} under {p.values[0].policy}" for p in HOSTILE}
    found |= {f"redirect {p.values[0]} -> {p.values[1]}" for p in REDIRECT_TARGETS}
    found |= {f"rebinding, second answer {p.values[0]}" for p in REBINDING_ANSWERS}
    found |= {f"EvaluateNode {p.values[0]}" for p in RPC_CASES}
    return found


def test_the_suite_tries_at_least_80_distinct_hostile_destinations() -> None:
    count = len(hostile_destinations())
    print(f"distinct hostile destinations: {count} ({len(HOSTILE)} table rows)")

    assert count >= 80
    assert len({p.id for p in HOSTILE}) == len(HOSTILE), "every row has its own id"
