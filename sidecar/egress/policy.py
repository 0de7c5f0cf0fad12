"""Where the sidecar may send requests: the egress policy, judged on addresses, not spellings.

Requests carry values typed by anonymous visitors, from a pod that can reach the cloud metadata
service and the cluster's internal services, so every destination is judged before a socket
opens:

- a host that is an IP address in any spelling (decimal `2130706433`, octal `0177.0.0.1`, hex
  `0x7f.1`, short `127.1`, trailing dot, bracketed IPv6, IPv4-mapped ...) is judged as the
  address it means;
- a host name is resolved once by the egress; every address it resolves to is judged, a name
  with any forbidden address is refused whole, and the connection goes to the judged addresses
  (no DNS-rebinding window);
- IPv6 forms that embed an IPv4 address (IPv4-mapped and -compatible, 6to4, NAT64, Teredo) are
  unwrapped and the embedded address is judged too: Python's `ipaddress` calls the NAT64 and 6to4
  forms of 169.254.169.254 global;
- forbidden by default: loopback, private (RFC 1918, ULA), link-local, CGNAT, multicast,
  unspecified, reserved, benchmarking and documentation ranges, and the cloud and hosting
  platforms' special-purpose addresses (metadata, host agents, DNS, time; some public-range, such
  as Azure's WireServer) and metadata names, each entry citing the page that documents it.

An operator allow-list may re-open ranges and names for in-cluster APIs. Loopback, link-local and
the platforms' addresses stay closed unless an allow-list entry names them explicitly (an entry
that merely contains them, such as `0.0.0.0/0`, does not). http is refused unless the host is in
the http allow-list. A refusal says what the destination is and which setting would allow it.

    >>> policy = EgressPolicy()
    >>> policy.judge_address(ipaddress.ip_address("169.254.169.254")).allowed
    False
"""

from __future__ import annotations

import ipaddress
import re
from dataclasses import dataclass, field
from typing import Final

from sidecar.core.hosts import canonical_host, host_names

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

_net = ipaddress.ip_network

# Never reachable unless an allow-list entry names them: the address itself, or a range no wider
# than the entry below (an entry that merely contains them, such as `0.0.0.0/0`, does not). The
# platforms' special-purpose addresses are here, each with the page that documents it; most sit
# inside link-local or ULA space, but naming them keeps them closed when an operator opens that
# space, and some (Azure's WireServer, IBM's service networks) are public-range addresses that
# no private-range rule would catch.
_SENSITIVE_RANGES: Final[tuple[tuple[IPNetwork, str], ...]] = (
    (_net("127.0.0.0/8"), "loopback"),
    (_net("::1/128"), "loopback"),
    (_net("169.254.0.0/16"), "link-local (cloud metadata lives here)"),
    (_net("fe80::/10"), "link-local"),
    # The instance metadata service of AWS, Azure, GCP, Oracle, IBM Cloud, DigitalOcean, Hetzner,
    # OpenStack, Akamai/Linode, Exoscale ...:
    # https://docs.aws.amazon.com/AWSEC2/latest/UserGuide/instancedata-data-retrieval.html
    # https://learn.microsoft.com/en-us/azure/virtual-machines/instance-metadata-service
    # https://cloud.google.com/compute/docs/metadata/querying-metadata
    # https://docs.oracle.com/en-us/iaas/Content/Compute/Tasks/gettingmetadata.htm
    # https://cloud.ibm.com/apidocs/vpc-metadata
    # https://docs.digitalocean.com/reference/api/metadata/
    # https://docs.hetzner.cloud/reference/cloud#server-metadata
    # https://docs.openstack.org/nova/latest/admin/metadata-service.html
    (_net("169.254.169.254/32"), "cloud metadata"),
    # AWS, https://docs.aws.amazon.com/whitepapers/latest/ipv6-on-aws/supporting-amazon-vpc-services.html
    (_net("fd00:ec2::254/128"), "cloud metadata (AWS IPv6)"),
    (_net("169.254.169.253/32"), "the AWS Route 53 Resolver (VPC DNS)"),
    (_net("fd00:ec2::253/128"), "the AWS Route 53 Resolver (VPC DNS, IPv6)"),
    (_net("169.254.169.123/32"), "the Amazon Time Sync Service"),
    (_net("fd00:ec2::123/128"), "the Amazon Time Sync Service (IPv6)"),
    # AWS, https://docs.aws.amazon.com/AmazonECS/latest/developerguide/task-iam-roles.html
    (_net("169.254.170.2/32"), "cloud metadata (AWS ECS task credentials)"),
    # AWS, https://docs.aws.amazon.com/eks/latest/userguide/pod-id-agent-setup.html
    (_net("169.254.170.23/32"), "cloud metadata (AWS EKS Pod Identity Agent)"),
    (_net("fd00:ec2::23/128"), "cloud metadata (AWS EKS Pod Identity Agent, IPv6)"),
    # AWS Windows activation (KMS) servers; AWS names them only in its Windows AMI notes, listed at
    # https://tecracer.com/blog/2018/02/link-local-addressen-bei-aws.html
    (_net("169.254.169.250/31"), "the AWS Windows activation (KMS) service"),
    # Azure, https://learn.microsoft.com/en-us/azure/virtual-network/what-is-ip-address-168-63-129-16
    # A public-range address: the host node's WireServer (VM agent, DHCP, DNS, health probes).
    (_net("168.63.129.16/32"), "the Azure WireServer (host agent, a public-range address)"),
    # GCP, https://cloud.google.com/compute/docs/metadata/querying-metadata
    (_net("fd20:ce::254/128"), "cloud metadata (GCP IPv6)"),
    # Oracle Cloud@Customer / OCI Classic,
    # https://docs.oracle.com/en/cloud/cloud-at-customer/occ-get-started/retrieve-predefined-instance-metadata.html
    (_net("192.0.0.192/32"), "cloud metadata (Oracle Cloud Classic)"),
    # Alibaba Cloud, https://www.alibabacloud.com/help/en/ecs/user-guide/overview-of-ecs-instance-metadata
    (_net("100.100.100.200/32"), "cloud metadata (Alibaba)"),
    # Tencent Cloud: https://www.tencentcloud.com/document/product/213/4934 names
    # metadata.tencentyun.com; 169.254.0.23 is the address behind it (the one the Datadog agent's
    # Tencent detector queries, github.com/DataDog/datadog-agent pkg/util/cloudproviders/tencent).
    (_net("169.254.0.23/32"), "cloud metadata (Tencent)"),
    # IBM Cloud, https://cloud.ibm.com/docs/vpc?topic=vpc-service-endpoints-for-vpc (IaaS
    # endpoints: DNS resolvers, NTP, mirrors, Object Storage) and
    # https://cloud.ibm.com/docs/hardware-firewall-dedicated?topic=hardware-firewall-dedicated-ibm-cloud-ip-ranges
    # (the service network and the Cloud Service Endpoints). Public-range addresses.
    (_net("161.26.0.0/16"), "the IBM Cloud infrastructure service network (a public-range block)"),
    (_net("166.8.0.0/14"), "the IBM Cloud private service endpoints (a public-range block)"),
    # OpenStack, https://docs.openstack.org/nova/latest/admin/metadata-service.html
    (_net("fe80::a9fe:a9fe/128"), "cloud metadata (OpenStack IPv6)"),
    # Scaleway, https://docs.cloud-init.io/en/latest/reference/datasources/scaleway.html
    (_net("169.254.42.42/32"), "cloud metadata (Scaleway)"),
    (_net("fd00:42::42/128"), "cloud metadata (Scaleway IPv6)"),
    # Akamai / Linode, https://docs.cloud-init.io/en/latest/reference/datasources/akamai.html
    (_net("fd00:a9fe:a9fe::1/128"), "cloud metadata (Akamai/Linode IPv6)"),
)
# Most specific first: 169.254.169.254 is judged as metadata (re-opened only by an entry naming
# it), never merely as link-local (which an allowed 169.254.0.0/16 would re-open).
SENSITIVE: Final = tuple(sorted(_SENSITIVE_RANGES, key=lambda item: -item[0].prefixlen))
# Forbidden by default; an allow-list entry that contains them re-opens them.
FORBIDDEN: Final[tuple[tuple[IPNetwork, str], ...]] = (
    (_net("0.0.0.0/8"), "unspecified / this network"),
    (_net("10.0.0.0/8"), "private (RFC 1918)"),
    (_net("100.64.0.0/10"), "carrier-grade NAT"),
    (_net("172.16.0.0/12"), "private (RFC 1918)"),
    (_net("192.0.0.0/24"), "IETF protocol assignments"),
    (_net("192.0.2.0/24"), "documentation"),
    (_net("192.88.99.0/24"), "6to4 relay anycast"),
    (_net("192.168.0.0/16"), "private (RFC 1918)"),
    (_net("198.18.0.0/15"), "benchmarking"),
    (_net("198.51.100.0/24"), "documentation"),
    (_net("203.0.113.0/24"), "documentation"),
    (_net("224.0.0.0/4"), "multicast"),
    (_net("240.0.0.0/4"), "reserved"),
    (_net("255.255.255.255/32"), "broadcast"),
    (_net("::/128"), "unspecified"),
    (_net("100::/64"), "discard-only"),
    (_net("2001:db8::/32"), "documentation"),
    (_net("3fff::/20"), "documentation"),
    (_net("fc00::/7"), "unique local (private)"),
    (_net("fec0::/10"), "site-local (deprecated private)"),
    (_net("ff00::/8"), "multicast"),
    (_net("2001::/23"), "IETF protocol assignments"),
)
# Names of metadata services and of the cluster's API server, refused by name before any lookup
# (re-opened only by naming them in egress_allow_hosts). Sources: the pages cited above, and
# https://deploy.equinix.com/developers/docs/metal/server-metadata/metadata/ (Equinix Metal),
# https://kubernetes.io/docs/tasks/run-application/access-api-from-pod/ (Kubernetes).
METADATA_NAMES: Final = frozenset(
    {
        "metadata",
        "metadata.google.internal",  # GCP
        "metadata.goog",  # GCP
        "metadata.azure.com",
        "instance-data",  # AWS
        "instance-data.ec2.internal",  # AWS
        "api.metadata.cloud.ibm.com",  # IBM Cloud VPC
        "metadata.tencentyun.com",  # Tencent Cloud
        "metadata.packet.net",  # Equinix Metal (formerly Packet)
        "metadata.platformequinix.com",  # Equinix Metal
        "kubernetes",
        "kubernetes.default",
        "kubernetes.default.svc",
        "kubernetes.default.svc.cluster.local",
    }
)
_NAT64: Final = (_net("64:ff9b::/96"), _net("64:ff9b:1::/48"))
_SIXTOFOUR: Final = _net("2002::/16")
_TEREDO: Final = _net("2001::/32")
_IPV4_COMPATIBLE: Final = _net("::/96")
_IPV4_PART = re.compile(r"(0[xX][0-9a-fA-F]*|0[0-7]*|[1-9][0-9]*)")
_HOST_LABEL = re.compile(r"[a-z0-9_]([a-z0-9_-]{0,61}[a-z0-9_])?")


@dataclass(frozen=True, slots=True)
class Verdict:
    """Whether a destination may be reached; if not, what it is and the setting that would open
    it (both safe to show to callers: addresses, host names and setting names, never a secret).

    >>> Verdict(False, "10.0.0.5 is private", "add it to egress_allow_cidrs").reason
    '10.0.0.5 is private; to allow it, add it to egress_allow_cidrs'
    """

    allowed: bool
    what: str = ""
    fix: str = ""

    @property
    def reason(self) -> str:
        """The refusal as one sentence: what the destination is, then how to allow it."""
        return f"{self.what}; to allow it, {self.fix}" if self.fix else self.what


ALLOWED: Final = Verdict(True)


@dataclass(frozen=True)
class EgressPolicy:
    """The operator's egress rules. The defaults reach only public addresses over https.

    >>> EgressPolicy(allow_cidrs=("10.20.0.0/16",), allow_http_hosts=("orders.internal",))
    ... # doctest: +ELLIPSIS
    EgressPolicy(...)
    """

    allow_cidrs: tuple[str, ...] = ()
    allow_hosts: tuple[str, ...] = ()
    allow_http_hosts: tuple[str, ...] = ()
    networks: tuple[IPNetwork, ...] = field(init=False, repr=False)

    def __post_init__(self) -> None:
        networks = tuple(ipaddress.ip_network(cidr, strict=False) for cidr in self.allow_cidrs)
        object.__setattr__(self, "networks", networks)

    def judge_scheme(self, scheme: str, host: str) -> Verdict:
        """https always; http only for hosts the operator listed."""
        if scheme == "https":
            return ALLOWED
        if scheme == "http" and canonical_host(host) in host_names(self.allow_http_hosts):
            return ALLOWED
        if scheme == "http":
            return Verdict(
                False,
                f"plain http is not allowed for {host!r}",
                f"add {canonical_host(host)} to egress_allow_http_hosts (or use https)",
            )
        return Verdict(False, f"scheme {scheme!r} is not allowed for {host!r}; use https")

    def judge_host(self, host: str) -> tuple[Verdict, IPAddress | None]:
        """Judge a URL host before any lookup: an address literal is judged as the address.

        Returns the verdict and, when the host is an address literal, that address (which the
        egress must then connect to as-is, without resolving).
        """
        name = canonical_host(host)
        if not name:
            return Verdict(False, "the URL has no host"), None
        address = parse_address(name)
        if address is not None:
            return self.judge_address(address), address
        listed = name in host_names(self.allow_hosts)
        metadata = name in METADATA_NAMES or (name.endswith(".internal") and "metadata" in name)
        if metadata and not listed:
            return Verdict(False, f"{host!r} is a cloud metadata name", _name_exactly(name)), None
        if (name == "localhost" or name.endswith(".localhost")) and not listed:
            return Verdict(False, f"{host!r} is loopback", _name_exactly(name)), None
        if not all(_HOST_LABEL.fullmatch(label) for label in name.split(".")):
            return Verdict(False, f"{host!r} is not a valid host name"), None
        return ALLOWED, None

    def host_is_listed(self, host: str) -> bool:
        """True when the operator named this host in the allow-list (re-opens its addresses)."""
        return canonical_host(host) in host_names(self.allow_hosts)

    def judge_address(self, address: IPAddress, *, host_listed: bool = False) -> Verdict:
        """Judge one address, and every IPv4 address embedded in it.

        `host_listed` is True when the address came from resolving a host name the operator put
        in `allow_hosts`: that re-opens every range, the sensitive ones included.
        """
        for candidate in (*embedded_ipv4(address), address):
            verdict = self._judge_one(candidate, host_listed=host_listed)
            if not verdict.allowed:
                if candidate is not address:
                    return Verdict(
                        False, f"{address} embeds {candidate}: {verdict.what}", verdict.fix
                    )
                return verdict
        return ALLOWED

    def _judge_one(self, address: IPAddress, *, host_listed: bool) -> Verdict:
        if host_listed:
            return ALLOWED
        for network, label in SENSITIVE:
            if address in network:
                if any(
                    address in allowed and allowed.prefixlen >= network.prefixlen
                    for allowed in self.networks
                    if allowed.version == address.version
                ):
                    return ALLOWED
                return Verdict(False, f"{address} is {label}", _sensitive_fix(address, network))
        explicitly_allowed = any(
            address in allowed for allowed in self.networks if allowed.version == address.version
        )
        for network, label in FORBIDDEN:
            if address in network and not explicitly_allowed:
                return Verdict(False, f"{address} is {label}", _CIDR_FIX)
        if not explicitly_allowed and (address.is_reserved or address.is_multicast):
            return Verdict(False, f"{address} is reserved", _CIDR_FIX)
        return ALLOWED

    def judge_resolved(self, host: str, address: IPAddress) -> Verdict:
        """Judge one address a host name resolved to; a refusal names the host and both ways
        to open it (the address in `egress_allow_cidrs`, or the name in `egress_allow_hosts`)."""
        verdict = self.judge_address(address, host_listed=self.host_is_listed(host))
        if verdict.allowed:
            return verdict
        return Verdict(
            False,
            f"{host!r} resolves to a refused address: {verdict.what}",
            f"{verdict.fix}, or add {canonical_host(host)} to egress_allow_hosts",
        )


_CIDR_FIX: Final = "add it (or its range) to egress_allow_cidrs"


def _sensitive_fix(address: IPAddress, network: IPNetwork) -> str:
    """How to open a sensitive address: name it, since a wider range never re-opens it."""
    if network.num_addresses == 1:
        return (
            f"add {network} itself to egress_allow_cidrs "
            "(a range that merely contains it does not open it)"
        )
    return (
        f"add it (or a range no wider than {network}) to egress_allow_cidrs "
        "(a wider range does not open it)"
    )


def _name_exactly(name: str) -> str:
    return f"add {name} itself to egress_allow_hosts (only the exact name opens it)"


def parse_address(host: str) -> IPAddress | None:
    """The address a host spelling means, in every form a resolver would accept; else None.

    IPv4 accepts what inet_aton does: 1 to 4 parts, each decimal, octal (leading 0) or hex
    (0x), the last part filling the remaining bytes (`127.1`, `2130706433`, `0x7f000001`).
    """
    text = host.strip("[]")
    if ":" in text:
        try:
            return ipaddress.IPv6Address(text.split("%", 1)[0])
        except ValueError:
            return None
    parts = text.split(".")
    if not 1 <= len(parts) <= 4 or not all(_IPV4_PART.fullmatch(part) for part in parts):
        return None
    numbers = [_ipv4_number(part) for part in parts]
    *leading, last = numbers
    if any(number > 255 for number in leading) or last >= 256 ** (5 - len(numbers)):
        return None
    value = last
    for index, number in enumerate(leading):
        value += number << (8 * (3 - index))
    return ipaddress.IPv4Address(value)


def _ipv4_number(part: str) -> int:
    """One inet_aton part: hex with 0x, octal with a leading 0, decimal otherwise."""
    if part[:2].lower() == "0x":
        return int(part[2:] or "0", 16)
    if len(part) > 1 and part[0] == "0":
        return int(part, 8)
    return int(part)


def embedded_ipv4(address: IPAddress) -> tuple[ipaddress.IPv4Address, ...]:
    """IPv4 addresses carried inside an IPv6 address (mapped, compatible, 6to4, NAT64, Teredo)."""
    if isinstance(address, ipaddress.IPv4Address):
        return ()
    found: list[ipaddress.IPv4Address] = []
    if address.ipv4_mapped is not None:
        found.append(address.ipv4_mapped)
    if address in _IPV4_COMPATIBLE and int(address) > 1:
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address in _SIXTOFOUR:
        found.append(ipaddress.IPv4Address((int(address) >> 80) & 0xFFFFFFFF))
    if any(address in prefix for prefix in _NAT64):
        found.append(ipaddress.IPv4Address(int(address) & 0xFFFFFFFF))
    if address in _TEREDO:
        found.append(ipaddress.IPv4Address(~int(address) & 0xFFFFFFFF))
        found.append(ipaddress.IPv4Address((int(address) >> 64) & 0xFFFFFFFF))
    return tuple(found)
