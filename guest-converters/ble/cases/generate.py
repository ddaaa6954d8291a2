"""The BLE value cases: each valueExpression (and compute) over each byte
string, read by the installed thingsboard-gateway's own converters
(BytesBLEUplinkConverter for `bytes`, HexBytesBLEUplinkConverter for `hex`),
written to python.json for the `ble` converter's test to compare with.

    python3 -m venv /tmp/tbgwpy
    /tmp/tbgwpy/bin/pip install thingsboard-gateway==3.8.5
    /tmp/tbgwpy/bin/python guest-converters/ble/cases/generate.py
"""
import json
import logging
import os

from thingsboard_gateway.connectors.ble.bytes_ble_uplink_converter import BytesBLEUplinkConverter
from thingsboard_gateway.connectors.ble.hex_bytes_ble_uplink_converter import HexBytesBLEUplinkConverter

log = logging.getLogger("cases")
log.addHandler(logging.NullHandler())
log.propagate = False

DATA = ["", "00", "2a", "0102", "010203", "0a00ff", "ff" * 4, "0123456789abcdef", "fe0c3412"]
BYTES_EXPRESSIONS = ["[0]", "[1]", "[2]", "[-1]", "[0:2]", "[1:]", "[:2]", "[:]", "[0:2]cm [2:]A",
                     "All values: [:]", "v=[0] w=[1]", "no index", "[0:0]", "[5:9]"]
HEX_EXPRESSIONS = ["[0:2]", "[1:3]", "[0:]", "[0:1]", "[2:4]", "[0:4]", "[0:8]", "temp [0:2]"]
COMPUTES = [None, "value / 10", "value * 2 + 1", "value & 0xff", "value // 3", "round(value / 7, 2)"]


def bytes_case(expr, data):
    c = BytesBLEUplinkConverter({"deviceName": "D", "deviceType": "t"}, log)
    r = c.convert({"type": "x"}, {"telemetry": [{"key": "k", "valueExpression": expr, "data": bytearray(data)}],
                                  "attributes": []})
    return r.telemetry[0].values if r.telemetry else None


def hex_case(expr, data, compute):
    c = HexBytesBLEUplinkConverter({"deviceName": "D", "deviceType": "t"}, log)
    item = {"key": "k", "valueExpression": expr}
    if compute:
        item["compute"] = compute
    r = c.convert({"type": "x", "telemetry": [item], "attributes": []}, data)
    return r.telemetry[0].values if r.telemetry else None


cases = []
for data in DATA:
    raw = bytes.fromhex(data)
    for expr in BYTES_EXPRESSIONS:
        values = bytes_case(expr, raw)
        value = list(values.values())[0] if values else None
        cases.append({"type": "bytes", "valueExpression": expr, "data": data, "value": value})
    for expr in HEX_EXPRESSIONS:
        for compute in COMPUTES:
            values = hex_case(expr, raw, compute)
            value = list(values.values())[0] if values else None
            cases.append({"type": "hex", "valueExpression": expr, "compute": compute, "data": data, "value": value})

out = os.path.join(os.path.dirname(os.path.abspath(__file__)), "python.json")
with open(out, "w") as f:
    json.dump(cases, f, indent=0)
    f.write("\n")
print(f"{len(cases)} cases, {sum(c['value'] is None for c in cases)} without a value, in {out}")
