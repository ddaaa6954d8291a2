"""The sensor example in Python: a sensor's JSON report to ThingsBoard
attributes (model, firmware, location) and telemetry (every reading, with
its own type), at the report's own time when it says. The Rust and
JavaScript versions beside it give the same output (`../expected.jsonl`)."""

import tbgw


def create(config: dict):
    device_type = config.get("deviceType", "sensor")
    if not isinstance(device_type, str):
        raise tbgw.ConfigError("must be a string", field="deviceType")
    return {"device_type": device_type}


def convert(state, message: tbgw.Message):
    report = message.json()
    if not isinstance(report, dict):
        raise ValueError("expected a JSON object")
    serial = report.get("serial")
    if not isinstance(serial, str):
        raise ValueError("missing `serial`")
    ts = report.get("ts")
    if "ts" in report and (isinstance(ts, bool) or not isinstance(ts, int)):
        raise ValueError("`ts` must be ms since the epoch")
    readings = report.get("readings", {})
    if not isinstance(readings, dict):
        raise ValueError("`readings` must be an object")
    attributes = {key: report[key] for key in ("model", "firmware", "location") if key in report}
    return tbgw.Update(
        device=serial, device_type=state["device_type"], attributes=attributes, telemetry=readings, ts=ts
    )
