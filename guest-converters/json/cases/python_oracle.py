#!/usr/bin/env python3
"""Run the JSON converter cases through the ThingsBoard IoT Gateway's own code.

Each case in uplink.json / downlink.json says what tbgw produces. This script
feeds the same config and message to the Python gateway (thingsboard-gateway
on PyPI) and reports, per case, whether it agrees. A case where the Python
gateway behaves differently must say so in its "python" field ("differs:
why"); an undocumented difference fails the run.

    python3 -m venv /tmp/tbvenv
    /tmp/tbvenv/bin/pip install thingsboard-gateway
    /tmp/tbvenv/bin/python guest-converters/json/cases/python_oracle.py

Uplink cases run JsonMqttUplinkConverter.convert(topic, data) as the MQTT
connector calls it. Downlink cases drive the connector's request handling
with its own helpers (re.match / re.search on the filters,
MqttConnector._format_value, TBUtility.replace_params_tags and
TBUtility.get_values with orjson.dumps), since the connector methods need a
live broker.
"""

import json
import logging
import os
import re
import sys
import time

import orjson
from thingsboard_gateway.connectors.mqtt.backward_compatibility_adapter import BackwardCompatibilityAdapter
from thingsboard_gateway.connectors.mqtt.json_mqtt_uplink_converter import JsonMqttUplinkConverter
from thingsboard_gateway.connectors.mqtt.mqtt_connector import MqttConnector
from thingsboard_gateway.tb_utility.tb_utility import TBUtility

logging.disable(logging.CRITICAL)
HERE = os.path.dirname(os.path.abspath(__file__))


def strict_equal(a, b):
    """Equality that tells 1 from 1.0 and True from 1, as JSON does."""
    if type(a) is not type(b):
        if isinstance(a, float) and isinstance(b, int) and not isinstance(b, bool):
            return False
        if isinstance(b, float) and isinstance(a, int) and not isinstance(a, bool):
            return False
        return False
    if isinstance(a, dict):
        return a.keys() == b.keys() and all(strict_equal(a[k], b[k]) for k in a)
    if isinstance(a, list):
        return len(a) == len(b) and all(strict_equal(x, y) for x, y in zip(a, b))
    return a == b


def python_uplink(case):
    config = case["config"]
    if BackwardCompatibilityAdapter.is_old_config_format({"mapping": [{"converter": config}]}):
        # The MQTT connector rewrites 2.x configs before making converters.
        adapted = BackwardCompatibilityAdapter({"mapping": [{"topicFilter": "x", "converter": config}]}).convert()
        config = adapted["mapping"][0]["converter"]
    converter = JsonMqttUplinkConverter({"converter": config}, logging.getLogger("oracle"))
    if "payload_text" in case:
        data = case["payload_text"]
    elif "payload_hex" in case:
        data = bytes.fromhex(case["payload_hex"]).decode("utf-8", "replace")
    else:
        data = case["payload"]
    before = int(time.time() * 1000)
    result = converter.convert(case.get("topic"), data)
    after = int(time.time() * 1000)
    items = result if isinstance(result, list) else [result]
    updates = []
    for item in items:
        d = item.to_dict()
        u = {"device": d["deviceName"]}
        if d["deviceType"] is not None:
            u["type"] = d["deviceType"]
        u["attributes"] = d["attributes"]
        u["telemetry"] = d["telemetry"]
        updates.append(u)
    return updates, (before, after)


def same_uplink(got, want, window):
    """Compare Python's updates with tbgw's; a telemetry entry tbgw leaves
    without ts (receipt time) matches a Python ts taken during the call."""
    if len(got) != len(want):
        return False
    for g, w in zip(got, want):
        if g["device"] != w["device"] or g.get("type") != w.get("type"):
            return False
        if not strict_equal(g["attributes"], w["attributes"]):
            return False
        # Python stamps each key without a timestamp separately with the
        # current time; tbgw leaves them without ts (the receipt time). Put
        # Python's entries stamped during the call back together.
        telemetry, received = [], None
        for entry in g["telemetry"]:
            if window[0] <= entry["ts"] <= window[1]:
                if received is None:
                    received = {"ts": entry["ts"], "values": {}}
                    telemetry.append(received)
                received["values"].update(entry["values"])
            else:
                telemetry.append(entry)
        if len(telemetry) != len(w["telemetry"]):
            return False
        for gt, wt in zip(telemetry, w["telemetry"]):
            if "ts" in wt:
                if gt["ts"] != wt["ts"]:
                    return False
            elif not (window[0] <= gt["ts"] <= window[1]):
                return False
            if not strict_equal(gt["values"], wt["values"]):
                return False
    return True


def format_value(value):
    return MqttConnector._format_value(value)


def mqtt(topic, payload, qos, retain, response=None):
    """A message as tbgw's cases write it (`{"mqtt": {...}}`)."""
    message = {"topic": topic, "payload": payload, "qos": int(qos), "retain": bool(retain)}
    if response:
        message["response"] = response
    return {"mqtt": message}


def python_downlink(case):
    config = case["config"]
    request = case["request"]
    device, data = request["device"], request["data"]
    messages = []
    if "method" in data:
        for rpc in config.get("serverSideRpc", []):
            if re.search(rpc["deviceNameFilter"], device) and re.search(rpc["methodFilter"], data["method"]):
                content = {"device": device, "data": data}
                def fill(text):
                    text = text.replace("${methodName}", str(data["method"])).replace("${requestId}", str(data["id"]))
                    text = text.replace("${deviceName}", device)
                    return TBUtility.replace_params_tags(text, content)
                topic = fill(rpc["requestTopicExpression"])
                expression = rpc["valueExpression"]
                tags = TBUtility.get_values(expression, data, "params", get_tag=True)
                values = TBUtility.get_values(expression, data, "params", expression_instead_none=True)
                payload = expression.replace("${deviceName}", device)
                for tag, value in zip(tags, values):
                    payload = payload.replace("${" + tag + "}", orjson.dumps(value).decode("utf-8"))
                response = None
                if rpc.get("responseTopicExpression") and rpc.get("responseTimeout"):
                    response = {"topic": fill(rpc["responseTopicExpression"]),
                                "qos": int(rpc.get("responseTopicQoS", 1)),
                                "timeoutMs": int(rpc["responseTimeout"])}
                messages.append(mqtt(topic, payload, rpc.get("qos", 0), rpc.get("retain", False), response))
                break
    else:
        for update in config.get("attributeUpdates", []):
            if not re.match(update["deviceNameFilter"], device):
                continue
            for key, value in data.items():
                if not re.match(update["attributeFilter"], key):
                    continue
                text = format_value(value)
                def fill(t):
                    return t.replace("${deviceName}", device).replace("${attributeKey}", key).replace("${attributeValue}", text)
                messages.append(mqtt(fill(update["topicExpression"]), fill(update["valueExpression"]),
                                     update.get("qos", 0), update.get("retain", False)))
    return messages


def main():
    undocumented = []
    counts = {"same": 0, "documented difference": 0, "n/a": 0}
    for file, run in (("uplink.json", "uplink"), ("downlink.json", "downlink")):
        with open(os.path.join(HERE, file), encoding="utf-8") as f:
            cases = json.load(f)
        for case in cases:
            name = f"{run}: {case['name']}"
            note = case.get("python", "same")
            if "config_error" in case:
                counts["n/a"] += 1
                print(f"n/a   {name} (the Python gateway does not validate configs)")
                continue
            try:
                if run == "uplink":
                    got, window = python_uplink(case)
                    same = "expect" in case and same_uplink(got, case["expect"], window)
                else:
                    got = python_downlink(case)
                    same = "expect" in case and got == case["expect"]
            except Exception as e:  # the Python gateway raised
                got, same = f"raised {type(e).__name__}: {e}", False
            if same and note == "same":
                counts["same"] += 1
                print(f"same  {name}")
            elif not same and note.startswith("differs"):
                counts["documented difference"] += 1
                print(f"diff  {name}\n      documented: {note}\n      python gave: {json.dumps(got, ensure_ascii=False)}")
            elif same:
                undocumented.append(name)
                print(f"SAME? {name}: documented as `{note}` but Python agrees")
            else:
                undocumented.append(name)
                print(f"DIFF! {name}\n      python gave: {json.dumps(got, ensure_ascii=False)}\n      tbgw gives:  {json.dumps(case.get('expect', case.get('error')), ensure_ascii=False)}")
    print(f"\n{counts}")
    if undocumented:
        print(f"{len(undocumented)} undocumented differences: {undocumented}")
        sys.exit(1)


if __name__ == "__main__":
    main()
