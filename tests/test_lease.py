"""The agent reads the fabric address from a DHCP lease file: hostile input, parsed
strictly (agent/lease.py). The end-to-end path, with a real dhclient and dnsmasq, is in
tests/test_dhcp.py."""

from __future__ import annotations

from datetime import UTC, datetime
from pathlib import Path

import pytest

from frostpoint.agent import lease

GOOD = """\
default-duid "\\000\\001\\000\\001";
lease {
  interface "eth0";
  fixed-address 10.213.0.11;
  option subnet-mask 255.255.255.0;
  option dhcp-lease-time 3600;
  option dhcp-message-type 5;
  option dhcp-server-identifier 10.213.0.1;
  option fabric-address 10.213.0.1;
  renew 5 2026/12/04 02:50:00;
  rebind 5 2026/12/04 03:15:00;
  expire 5 2099/12/04 03:22:30;
}
"""


def test_a_lease_from_dhclient_names_the_fabric() -> None:
    got = lease.parse(GOOD)
    assert got == lease.Lease("eth0", "10.213.0.11", "10.213.0.1",
                              datetime(2099, 12, 4, 3, 22, 30, tzinfo=UTC))
    # The last lease is the current one.
    newer = GOOD + GOOD.split("\n", 1)[1].replace("fabric-address 10.213.0.1",
                                                  "fabric-address 10.213.0.5")
    last = lease.parse(newer)
    assert last is not None and last.fabric == "10.213.0.5"


@pytest.mark.parametrize("bad", [
    "10.213.1.1",  # outside the fabric's subnet
    "8.8.8.8",
    "010.213.0.1",  # leading zeros (octal to some parsers)
    "10.213.0.255",  # the broadcast address
    "10.213.0.0",
    "fabric.example",
    "10.213.0.1 10.213.0.2",
    "",
])
def test_an_option_245_that_is_not_a_fabric_address_is_ignored(bad: str) -> None:
    got = lease.parse(GOOD.replace("fabric-address 10.213.0.1", f"fabric-address {bad}"))
    assert got is None or got.fabric is None


@pytest.mark.parametrize("text", [
    GOOD.replace("  option subnet-mask", "  option fabric-address 10.213.0.9;\n"
                 "  option subnet-mask"),  # two of them: not dhclient's file
    GOOD.replace("option dhcp-lease-time 3600;", "option dhcp-lease-time 3600; }"),
    GOOD.replace("renew 5", "renew\t5"),
    GOOD.replace('interface "eth0"', 'interface "eth0; rm -rf /"'),
    GOOD.replace("expire 5 2099/12/04 03:22:30", "expire soon"),
    GOOD.replace("expire 5 2099/12/04 03:22:30", "expire 5 2099/13/45 03:22:30"),
    GOOD.replace("  expire 5 2099/12/04 03:22:30;\n", ""),
    GOOD.replace("fixed-address 10.213.0.11", "fixed-address 192.168.1.5"),
    GOOD.replace("lease {", "lease {{"),
    "",
])
def test_a_lease_file_out_of_grammar_names_nothing(text: str) -> None:
    assert lease.parse(text) is None


def test_the_file_is_read_strictly(tmp_path: Path) -> None:
    f = tmp_path / "dhclient.eth0.leases"
    f.write_text(GOOD)
    assert lease.read(f) is not None
    f.write_bytes(GOOD.encode().replace(b"eth0", b"eth\xff"))
    assert lease.read(f) is None, "not ASCII"
    f.write_text(GOOD + "#" * lease.MAX_BYTES)
    assert lease.read(f) is None, "too large"
    assert lease.read(tmp_path / "missing") is None


def test_an_expired_lease_or_one_the_client_does_not_hold_names_nothing(
        tmp_path: Path) -> None:
    f = tmp_path / "dhclient.eth0.leases"
    f.write_text(GOOD.replace('"eth0"', '"fp-no-such0"'))
    got = lease.read(f)
    assert got is not None and not lease.held(got), "no such interface holds it"
    assert lease.fabric_from_lease(f) is None
    expired = lease.parse(GOOD.replace("2099/12/04", "2001/12/04"))
    assert expired is not None and not lease.held(expired)
