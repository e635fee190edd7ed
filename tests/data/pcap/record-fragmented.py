#!/usr/bin/env python3
"""Records sip-fragmented-udp.pcap: a 3.2 KB SIP INVITE (2.8 KB of SDP) over UDP,
fragmented by the kernel over a 1500-byte MTU link, answered 100 and 486 and ACKed; once over
IPv4 and once over IPv6.

Run as root (needs network namespaces and tcpdump): `python3 record-fragmented.py OUT.pcap`.
Two namespaces joined by a veth pair (MTU 1500) are made for the run and deleted after it; only
their own addresses (10.99.0.1-2, fd00:99::1-2) are used. tcpdump records on the receiving end.
"""

import os
import socket
import subprocess
import sys
import time

CALLER, CALLEE = "bhfrag-caller", "bhfrag-callee"
V4 = ("10.99.0.1", "10.99.0.2")
V6 = ("fd00:99::1", "fd00:99::2")


def sh(*args):
    subprocess.run(args, check=True)


def sdp(host, family):
    """An offer with many codecs, SRTP keys and ICE candidates: what makes real SDPs big."""
    lines = [
        "v=0",
        f"o=- 4611731400430051336 2 IN {family} {host}",
        "s=-",
        f"c=IN {family} {host}",
        "t=0 0",
        "a=group:BUNDLE 0 1",
        "m=audio 40000 RTP/SAVPF 111 9 0 8 13 110 126",
        "a=mid:0",
        "a=rtcp-mux",
        "a=ice-ufrag:Fr4g",
        "a=ice-pwd:bridgeheadfragmentedcapture0001",
        "a=fingerprint:sha-256 " + ":".join(f"{(i * 37) % 256:02X}" for i in range(32)),
        "a=setup:actpass",
        "a=rtpmap:111 opus/48000/2",
        "a=fmtp:111 minptime=10;useinbandfec=1;stereo=0;sprop-stereo=0;maxaveragebitrate=40000",
        "a=rtpmap:9 G722/8000",
        "a=rtpmap:0 PCMU/8000",
        "a=rtpmap:8 PCMA/8000",
        "a=rtpmap:13 CN/8000",
        "a=rtpmap:110 telephone-event/48000",
        "a=rtpmap:126 telephone-event/8000",
        "a=fmtp:126 0-16",
        "a=ptime:20",
        "a=sendrecv",
    ]
    for n in range(1, 5):
        key = "".join(chr(65 + (n * 7 + i) % 26) for i in range(40))
        lines.append(f"a=crypto:{n} AES_CM_128_HMAC_SHA1_80 inline:{key}|2^31|1:1")
    for n in range(16):
        lines.append(
            f"a=candidate:{1000 + n} 1 udp {2122260223 - n * 1000} {host} {40000 + n * 2}"
            f" typ host generation 0 network-id {n + 1}"
        )
    lines += [
        "m=video 40100 RTP/SAVPF 96 97 98 99",
        "a=mid:1",
        "a=rtcp-mux",
        "a=rtpmap:96 VP8/90000",
        "a=rtcp-fb:96 nack",
        "a=rtcp-fb:96 nack pli",
        "a=rtcp-fb:96 ccm fir",
        "a=rtpmap:97 rtx/90000",
        "a=fmtp:97 apt=96",
        "a=rtpmap:98 H264/90000",
        "a=fmtp:98 level-asymmetry-allowed=1;packetization-mode=1;profile-level-id=42e01f",
        "a=rtpmap:99 rtx/90000",
        "a=fmtp:99 apt=98",
        "a=sendrecv",
        "a=x-end-of-large-sdp",
    ]
    return "\r\n".join(lines) + "\r\n"


def invite(src, dst, family, call):
    host = f"[{src}]" if family == "IP6" else src
    target = f"[{dst}]" if family == "IP6" else dst
    body = sdp(src, family)
    return (
        f"INVITE sip:+4930987654@{target}:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:5060;branch=z9hG4bK-{call}-1\r\n"
        "Max-Forwards: 70\r\n"
        f'From: "Alice" <sip:+4930123456@operator.example>;tag=alice-{call}\r\n'
        "To: <sip:+4930987654@teams.example>\r\n"
        f"Call-ID: {call}@operator.example\r\n"
        "CSeq: 1 INVITE\r\n"
        f"Contact: <sip:alice@{host}:5060>\r\n"
        "Content-Type: application/sdp\r\n"
        f"Content-Length: {len(body)}\r\n\r\n{body}"
    ).encode()


def header(message, name):
    for line in message.split("\r\n"):
        if line.lower().startswith(name.lower() + ":"):
            return line
    raise ValueError(name)


def callee(family):
    """Answers each INVITE with 100 and 486, then waits for the ACK."""
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((V4[1] if family == socket.AF_INET else V6[1], 5060))
    sock.settimeout(10)
    data, peer = sock.recvfrom(65535)
    text = data.decode()
    common = "\r\n".join(header(text, h) for h in ("Via", "From")) + "\r\n"
    to = header(text, "To")
    rest = "\r\n".join(header(text, h) for h in ("Call-ID", "CSeq")) + "\r\n"
    sock.sendto(f"SIP/2.0 100 Trying\r\n{common}{to}\r\n{rest}Content-Length: 0\r\n\r\n".encode(), peer)
    time.sleep(0.02)
    sock.sendto(
        f"SIP/2.0 486 Busy Here\r\n{common}{to};tag=bob-1\r\n{rest}Content-Length: 0\r\n\r\n".encode(),
        peer,
    )
    sock.recvfrom(65535)  # the ACK


def caller(family):
    """Sends the INVITE, and the ACK for the final response."""
    v6 = family == socket.AF_INET6
    src, dst = V6 if v6 else V4
    call = "frag-v6" if v6 else "frag-v4"
    sock = socket.socket(family, socket.SOCK_DGRAM)
    sock.bind((src, 5060))
    sock.settimeout(10)
    request = invite(src, dst, "IP6" if v6 else "IP4", call)
    assert 3000 < len(request) < 4400, len(request)
    sock.sendto(request, (dst, 5060))
    while True:
        data, _ = sock.recvfrom(65535)
        text = data.decode()
        if not text.startswith("SIP/2.0 1"):
            break
    host = f"[{src}]" if v6 else src
    target = f"[{dst}]" if v6 else dst
    ack = (
        f"ACK sip:+4930987654@{target}:5060 SIP/2.0\r\n"
        f"Via: SIP/2.0/UDP {host}:5060;branch=z9hG4bK-{call}-1\r\n"
        "Max-Forwards: 70\r\n"
        f"{header(text, 'From')}\r\n{header(text, 'To')}\r\n{header(text, 'Call-ID')}\r\n"
        "CSeq: 1 ACK\r\nContent-Length: 0\r\n\r\n"
    )
    sock.sendto(ack.encode(), (dst, 5060))


def record(out):
    def cleanup():
        for ns in (CALLER, CALLEE):
            subprocess.run(["ip", "netns", "del", ns], stderr=subprocess.DEVNULL)

    cleanup()
    try:
        sh("ip", "netns", "add", CALLER)
        sh("ip", "netns", "add", CALLEE)
        sh("ip", "link", "add", "bhfrag0", "netns", CALLER, "type", "veth",
           "peer", "name", "bhfrag1", "netns", CALLEE)
        for ns, dev, (v4, v6) in ((CALLER, "bhfrag0", (V4[0], V6[0])),
                                  (CALLEE, "bhfrag1", (V4[1], V6[1]))):
            sh("ip", "-n", ns, "link", "set", "lo", "up")
            sh("ip", "-n", ns, "link", "set", dev, "mtu", "1500", "up")
            sh("ip", "-n", ns, "addr", "add", f"{v4}/24", "dev", dev)
            sh("ip", "-n", ns, "addr", "add", f"{v6}/64", "dev", dev, "nodad")
        # Neighbours known in advance: no ARP or neighbour discovery between the messages.
        macs = {}
        for ns, dev in ((CALLER, "bhfrag0"), (CALLEE, "bhfrag1")):
            out_text = subprocess.run(["ip", "-n", ns, "-o", "link", "show", dev],
                                      check=True, capture_output=True, text=True).stdout
            macs[ns] = out_text.split("link/ether ")[1].split()[0]
        sh("ip", "-n", CALLER, "neigh", "add", V4[1], "lladdr", macs[CALLEE], "dev", "bhfrag0")
        sh("ip", "-n", CALLER, "neigh", "add", V6[1], "lladdr", macs[CALLEE], "dev", "bhfrag0")
        sh("ip", "-n", CALLEE, "neigh", "add", V4[0], "lladdr", macs[CALLER], "dev", "bhfrag1")
        sh("ip", "-n", CALLEE, "neigh", "add", V6[0], "lladdr", macs[CALLER], "dev", "bhfrag1")
        # UDP, and IPv6 packets whose first extension is a fragment header (libpcap's `udp`
        # does not look past it). As root throughout, so that it may write anywhere.
        dump = subprocess.Popen(["ip", "netns", "exec", CALLEE, "tcpdump", "-i", "bhfrag1",
                                 "-Z", "root", "-U", "--immediate-mode", "-w", out,
                                 "udp or ip6[6] == 44"],
                                stderr=subprocess.DEVNULL)
        try:
            time.sleep(1.5)
            me = os.path.abspath(__file__)
            for family in ("4", "6"):
                answer = subprocess.Popen(["ip", "netns", "exec", CALLEE, sys.executable, me,
                                           "callee", family])
                try:
                    time.sleep(0.3)
                    sh("ip", "netns", "exec", CALLER, sys.executable, me, "caller", family)
                    answer.wait(timeout=10)
                finally:
                    if answer.poll() is None:
                        answer.terminate()
                        answer.wait(timeout=10)
            time.sleep(1.5)
        finally:
            dump.terminate()
            dump.wait(timeout=10)
    finally:
        cleanup()


if __name__ == "__main__":
    if len(sys.argv) == 3 and sys.argv[1] in ("caller", "callee"):
        family = socket.AF_INET6 if sys.argv[2] == "6" else socket.AF_INET
        (caller if sys.argv[1] == "caller" else callee)(family)  # inside a namespace
    elif len(sys.argv) == 2:
        record(sys.argv[1])
    else:
        sys.exit(__doc__)
