"""Sends one message of lab results as an ASTM analyzer, encoded and framed
by the astm-2025 package (PyPI): code no one on the kouan team wrote.

    astm_send.py tcp PORT [--encoding gbk] [--chunk-size N] [--bulk] [--comment TEXT]
    astm_send.py tcp-listen PORT [same options]   (the agent connects)
    astm_send.py serial PATH [same options]

The records, their checksums and their ETB splits come from the package's
codec (astm.codec.encode): the whole message in one encoding with --bulk,
else one record a message, as the package's emitter does. This script runs
the E1381 session around the frames: ENQ, each frame sent after the ACK of
the one before, EOT. The package's own client cannot run under Python 3:
its asynclib calls Python 2's buffer(), and its record-order check wants
str type letters that its codec cannot encode (it takes any str for a list
of components and recurses forever), so every text goes in as bytes.

Exits non-zero with a message if a reply is not ACK.
"""

import argparse
import socket
import sys

try:
    from astm import codec
    from astm.constants import ACK, ENQ, EOT
except ImportError:
    sys.exit("missing Python package: python3 -m pip install astm-2025")

# A comment long enough to be split over several frames by --chunk-size.
LONG_COMMENT = " ".join(["instrument note"] * 12)


def as_bytes(value, encoding):
    """Text as bytes in the analyzer's code page, through nested lists."""
    if isinstance(value, str):
        return value.encode(encoding)
    if isinstance(value, list):
        return [as_bytes(item, encoding) for item in value]
    return value


def records(comment, encoding):
    """The message: header, patient, order, two results with comments,
    terminator."""
    glu = [None, None, None, "GLU"]
    chol = [None, None, None, "CHOL"]
    message = [
        ["H", [[], ["", "&"]], None, None, ["PyAnalyzer", "1.0"]],
        ["P", "1", "PAT-42"],
        ["O", "1", "SID-900", "INS-900", glu, "R"],
        ["R", "1", glu, "5.6", "mmol/L", "3.9-6.1", "N",
         None, "F", None, None, None, "20261203101500"],
        ["C", "1", "I", comment, "G"],
        ["R", "2", chol, "7.9", "mmol/L", "<5.2", "H",
         None, "F", None, None, None, "20261203101530"],
        ["C", "1", "I", LONG_COMMENT, "G"],
        ["L", "1", "N"],
    ]
    return [as_bytes(record, encoding) for record in message]


def frames(comment, encoding, chunk_size, bulk):
    """The frames of the message, numbered from 1 on."""
    message = records(comment, encoding)
    if bulk:
        return codec.encode(message, encoding, chunk_size)
    out = []
    for record in message:
        out.extend(codec.encode([record], encoding, chunk_size, len(out) + 1))
    return out


def session(send, receive, frames):
    """ENQ, the frames, EOT; every reply before EOT must be ACK."""
    for i, data in enumerate([ENQ] + frames):
        send(data)
        reply = receive()
        if reply != ACK:
            sys.exit("frame %d %r got %r, not ACK" % (i, data, reply))
    send(EOT)


def main():
    parser = argparse.ArgumentParser()
    parser.add_argument("transport", choices=["tcp", "tcp-listen", "serial"])
    parser.add_argument("where", help="TCP port on 127.0.0.1, or serial port path")
    parser.add_argument("--encoding", default="latin-1")
    parser.add_argument("--chunk-size", type=int, default=None)
    parser.add_argument("--bulk", action="store_true")
    parser.add_argument("--comment", default="fasting sample")
    args = parser.parse_args()
    message = frames(args.comment, args.encoding, args.chunk_size, args.bulk)

    if args.transport == "tcp":
        with socket.create_connection(("127.0.0.1", int(args.where)), timeout=30) as sock:
            session(sock.sendall, lambda: sock.recv(1), message)
    elif args.transport == "tcp-listen":
        with socket.create_server(("127.0.0.1", int(args.where))) as server:
            server.settimeout(60)
            print("listening", flush=True)
            sock, _ = server.accept()
            with sock:
                sock.settimeout(30)
                session(sock.sendall, lambda: sock.recv(1), message)
    else:
        try:
            import serial
        except ImportError:
            sys.exit("missing Python package: python3 -m pip install pyserial")
        with serial.Serial(args.where, 9600, timeout=30) as port:
            session(port.write, lambda: port.read(1), message)
            port.flush()


if __name__ == "__main__":
    main()
