"""The Python gateway's own decoding of CAN frames, for ../src/tests.rs.

Needs thingsboard-gateway (3.8.x) and python-can installed; run
`python3 generate.py > python.json` here. Each line: a value spec (as
can.json writes it), an expression (or none), a frame's data in hex, and
what the ThingsBoard IoT Gateway's BytesCanUplinkConverter sends for it
(its value with its Python type), or that it drops the key. The spec is
read by the gateway's own CanConnector parser.
"""
import json
import logging
import math

from thingsboard_gateway.connectors.can.can_connector import CanConnector
from thingsboard_gateway.connectors.can.bytes_can_uplink_converter import BytesCanUplinkConverter


class Quiet:
    VALUE_REGEX = CanConnector.VALUE_REGEX
    DEFAULT_BYTEORDER = CanConnector.DEFAULT_BYTEORDER
    DEFAULT_SIGNED_FLAG = CanConnector.DEFAULT_SIGNED_FLAG
    DEFAULT_ENCODING = CanConnector.DEFAULT_ENCODING
    _log = logging.getLogger("quiet")

    def get_name(self):
        return "golden"


logging.disable(logging.CRITICAL)
parse_value = CanConnector._CanConnector__parse_value_config

FRAMES = ["0102030405060708", "FF7F8000C0A8FE01", "3F8CCCCD40490FDB", "400921FB54442D18", "48656C6C6F2C2057", "C3A9E282AC000000"]

SPECS = [
    "0:1:bool", "1:1:boolean", "3:1:bool",
    "0:1:int", "0:2:int", "0:2:big:int", "0:2:little:int", "0:2:big:int:signed", "0:2:little:int:signed",
    "1:1:int:signed", "0:4:big:long", "0:4:little:long:signed", "0:8:big:long:signed", "4:4:little:int",
    "2:3:big:int", "2:3:little:int:signed", "1:-1:big:int", "7:1:int:signed", "0:7:little:int",
    "0:4:big:float", "0:4:little:float", "4:4:big:float", "0:8:big:float", "0:8:big:double", "0:8:little:double",
    "0:5:string", "0:-1:string:latin-1", "2:3:string:ascii", "0:8:raw", "2:-1:raw", "3:2:little:raw",
    "0:3:string:utf-8",
    {"start": 0, "length": 2, "byteorder": "little", "type": "int", "signed": True},
    {"start": 1, "length": 2, "type": "int"},
    {"start": 0, "length": 4, "byteorder": "little", "type": "float"},
    {"start": 2, "length": -1, "type": "raw"},
    {"start": 0, "length": 5, "type": "string", "encoding": "ascii"},
]

EXPRESSIONS = [
    ("4:1:int", "bool(value & 0b00000100)"),
    ("4:2:big:int", "value / 4"),
    ("4:2:little:int", "value * 10"),
    ("0:1:int", "value + 5"),
    ("0:2:big:int:signed", "value // 7 if value > 0 else -value % 7"),
    ("0:1:int", "can_data[1] << 8 | can_data[2]"),
    ("0:1:int", "round(value / 3, 2)"),
    ("0:4:big:float", "round(value, 3)"),
    ("0:1:int", "hex(value)"),
    ("0:1:int", "len(can_data) * value"),
]


def typed(v):
    if isinstance(v, bool):
        return {"bool": v}
    if isinstance(v, int):
        return {"int": v}
    if isinstance(v, float):
        # As text: read back exactly (JSON readers round some floats).
        return {"float": repr(v)}
    return {"str": v}


def run(spec, expression, frame):
    config = parse_value(Quiet(), spec)
    if config is None:
        return {"refused": True}
    config.update({"key": "k", "is_ts": True, "strictEval": False})
    if expression:
        config["expression"] = expression
    data = BytesCanUplinkConverter(logging.getLogger("quiet")).convert(
        {"deviceName": "D", "deviceType": "t", "configs": [config]}, bytearray.fromhex(frame))
    values = [v for entry in data.telemetry for v in entry.values.values()]
    return typed(values[0]) if values else {"dropped": True}


for spec in SPECS:
    for frame in FRAMES:
        print(json.dumps({"value": spec, "frame": frame, "result": run(spec, None, frame)}, ensure_ascii=False))
for spec, expression in EXPRESSIONS:
    for frame in FRAMES:
        print(json.dumps({"value": spec, "expression": expression, "frame": frame,
                          "result": run(spec, expression, frame)}, ensure_ascii=False))
