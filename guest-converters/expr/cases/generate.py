"""Python's own results for the expression cases of ../src/tests.rs.

Run `python3 generate.py > python.json` here after changing the cases; the
unit tests compare tbgw-expr with every line. Each case is evaluated as the
ThingsBoard IoT Gateway evaluates a CAN `expression` in strict mode:
`eval(text, {"__builtins__": {...the functions...}}, {"value": ..., "can_data": bytearray(...)})`.
"""
import json
import math

FUNCTIONS = {f.__name__: f for f in (int, float, bool, round, abs, min, max, hex, len)}

VARS = [
    {"value": 6, "can_data": [0x01, 0x02, 0xFF, 0x80, 0x7F, 0x00, 0x10, 0x04]},
    {"value": -7, "can_data": [0xAB, 0xCD]},
    {"value": 2.5, "can_data": []},
    {"value": True, "can_data": [0x00]},
]

CASES = [
    "value", "value / 4", "value // 4", "value % 4", "-value // 4", "-value % 4", "value % -4",
    "value ** 2", "2 ** -1", "-2 ** 2", "2 ** 3 ** 2", "value * 10", "value + 0.5", "value - 1",
    "bool(value & 0b00000100)", "value & 0x0F", "value | 1", "value ^ 3", "~value", "value << 3",
    "value >> 1", "-value >> 1", "1 + 2 * 3 - 4 / 2", "(1 + 2) * 3", "7 // 2 * 2 + 7 % 2",
    "7.5 // 2", "-7.5 // 2", "7.5 % 2", "-7.5 % 2", "7.5 % -2",
    "can_data[0]", "can_data[-1]", "can_data[0] << 8 | can_data[1]", "len(can_data)",
    "can_data[1:3]", "can_data[::2]", "can_data[::-1]", "can_data[5:]", "can_data[-2:]", "can_data[10:20]",
    "can_data[0:2] == can_data[0:2]", "max(can_data) if len(can_data) else -1",
    "min(can_data) if can_data else 0", "max(value, 3)", "min(value, 3, 10)", "abs(value)", "abs(-2.5)",
    "round(value)", "round(2.5)", "round(3.5)", "round(-2.5)", "round(value / 3, 2)", "round(2.675, 2)",
    "round(1234, -2)", "round(1250, -2)", "round(1350, -2)", "round(0.125, 2)",
    "int(value)", "int(2.9)", "int(-2.9)", "int('42')", "int(' -17 ')", "int('ff', 16)", "int('0x1f', 16)",
    "int('0b101', 0)", "float(value)", "float('2.5')", "float('1e3')", "bool(value)", "bool(0)", "bool('')",
    "hex(value)", "hex(-255)", "hex(0)", "value > 3", "0 < value < 10", "value == 6", "value != 6",
    "1 < 2 > 3", "value if value > 0 else -value", "'hot' if value > 5 else 'cold'",
    "value > 0 and value < 10", "value and 'yes'", "0 or 'fallback'", "not value", "not not value",
    "True + True", "True & False", "True | 2", "value == True", "None if False else 5",
    "'a' + 'b'", "'abc'[1]", "'abc'[-1:]", "len('héllo')", "1_000 + 0x10 + 0o10 + 0b10", ".5 + 1.",
    "1e-3 * 1000", "value / 0", "value // 0", "value % 0", "2.0 / 0", "can_data[8]", "1 < 'a'",
    "'a' + 1", "2 ** 63", "9223372036854775807 + 1", "-(-9223372036854775807 - 1)", "0 ** -1",
    "(-8) ** 0.5", "int('x')", "float('x')", "min(can_data)", "1 << 64", "1 << 62", "-1 << 63",
    "5 >> 100", "-5 >> 100", "1 << -1", "value * 1.5 > 8.9 or value < 0",
    "3 if value else 4 if can_data else 5", "can_data[0] + can_data[1] * 256",
]

def encode(v):
    if isinstance(v, bool):
        return {"bool": v}
    if isinstance(v, int):
        if -(2**63) <= v < 2**63:
            return {"int": v}
        return {"error": "overflow"}
    if isinstance(v, float):
        if math.isnan(v) or math.isinf(v):
            return {"float": str(v)}
        return {"float": v}
    if isinstance(v, str):
        return {"str": v}
    if isinstance(v, (bytes, bytearray)):
        return {"bytes": list(v)}
    if v is None:
        return {"none": None}
    if isinstance(v, complex):
        return {"error": "complex"}
    return {"error": type(v).__name__}

for i, env in enumerate(VARS):
    for case in CASES:
        local = {"value": env["value"], "can_data": bytearray(env["can_data"])}
        try:
            result = encode(eval(case, {"__builtins__": FUNCTIONS}, local))
        except Exception as e:
            result = {"error": type(e).__name__}
        print(json.dumps({"vars": i, "expr": case, "result": result}, ensure_ascii=False))
