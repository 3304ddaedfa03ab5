#!/usr/bin/env python3
"""Modbus RTU slaves for kouan's end-to-end tests, served by pymodbus.

Usage: modbus_peer.py PORT SPEC_JSON

SPEC_JSON lists the slave addresses on the bus and the values each holds:

    {"devices": [{"address": 1, "values": [
        {"table": "holding", "address": 0, "type": "f32", "order": "cdab",
         "value": 1.5},
        {"table": "coil", "address": 3, "type": "bool", "value": true}]}]}

Tables are "coil", "discrete", "holding" and "input"; types "bool", "u16",
"i16", "u32", "i32" and "f32"; orders "abcd", "cdab", "badc" and "dcba"
(the big-endian bytes A B C D of the value as they appear on the wire).
Values are encoded here with Python's struct module, independently of the
agent's decoder. Addresses are 0-based protocol addresses; addresses that
are not listed answer with exception 02 (illegal data address). Slave
addresses that are not listed never answer. Writes to address 0 are
broadcasts: every slave acts on them, none answers.

Prints "ready" on stdout once the port is open. Exits with status 3 and
the install command if pymodbus is missing.
"""

import asyncio
import json
import struct
import sys

try:
    from pymodbus.server import ModbusSerialServer
    from pymodbus.simulator import DataType, SimData, SimDevice
except ImportError as error:
    print(
        f"pymodbus is missing ({error}): "
        "python3 -m pip install 'pymodbus[serial]==3.16.*'",
        file=sys.stderr,
        flush=True,
    )
    sys.exit(3)

FORMATS = {"u16": ">H", "i16": ">h", "u32": ">I", "i32": ">i", "f32": ">f"}
ORDERS = {"abcd": (0, 1, 2, 3), "cdab": (2, 3, 0, 1), "badc": (1, 0, 3, 2), "dcba": (3, 2, 1, 0)}
TABLES = ("coil", "discrete", "holding", "input")


def registers(kind, order, value):
    """The registers a device with this byte order sends for value."""
    packed = struct.pack(FORMATS[kind], value)
    if len(packed) == 2:
        # 16-bit values: the orders that swap bytes in a word swap them.
        wire = packed if order in ("abcd", "cdab") else packed[::-1]
    else:
        wire = bytes(packed[i] for i in ORDERS[order])
    return [int.from_bytes(wire[i : i + 2], "big") for i in range(0, len(wire), 2)]


def blocks(cells, datatype):
    """SimData blocks of contiguous addresses; gaps stay undefined."""
    out = []
    run_start, run = None, []
    for address in sorted(cells):
        if run and address != run_start + len(run):
            out.append(SimData(run_start, values=run, datatype=datatype))
            run = []
        if not run:
            run_start = address
        run.append(cells[address])
    if run:
        out.append(SimData(run_start, values=run, datatype=datatype))
    return out


def device(spec):
    tables = {name: {} for name in TABLES}
    for entry in spec["values"]:
        table = tables[entry["table"]]
        if entry["type"] == "bool":
            table[entry["address"]] = bool(entry["value"])
            continue
        words = registers(entry["type"], entry.get("order", "abcd"), entry["value"])
        for i, word in enumerate(words):
            table[entry["address"] + i] = word
    # Non-shared mode: four tables, bits addressed one by one. pymodbus
    # refuses an empty table, so an unused one gets a cell far away.
    simdata = []
    for name in TABLES:
        bits = name in ("coil", "discrete")
        cells = tables[name] or {60000: False if bits else 0}
        simdata.append(blocks(cells, DataType.BITS if bits else DataType.REGISTERS))
    return SimDevice(spec["address"], simdata=tuple(simdata))


async def main():
    port, spec = sys.argv[1], json.loads(sys.argv[2])
    devices = [device(d) for d in spec["devices"]]

    present = {d["address"] for d in spec["devices"]}

    def connected(up):
        if up:
            print("ready", flush=True)

    def heard(sending, pdu):
        # A request to an address nobody has is dropped before it is
        # handled, as on a real bus: pymodbus would answer it with an
        # exception for a list of SimDevices (ignore_missing_devices covers
        # only the older datastore contexts).
        if not sending and pdu.dev_id not in present and pdu.dev_id != 0:
            return None
        return pdu

    server = ModbusSerialServer(
        devices,
        port=port,
        baudrate=19200,
        ignore_missing_devices=True,
        broadcast_enable=True,
        trace_connect=connected,
        trace_pdu=heard,
    )
    await server.serve_forever()


if __name__ == "__main__":
    asyncio.run(main())
