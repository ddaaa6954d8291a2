"""Your converter: edit `create` and `convert`.

`create` gets the converter's config (the `converter` object of the mapping
in mqtt.json, as a dict) once per instance; raise `tbgw.ConfigError` to name
a field that is wrong. `convert` gets one device message and returns an
`Update` (or a list of them, or None for nothing). Raise an exception, or
let one happen, to fail this message with its reason.

Test the logic on plain CPython: `python3 -m unittest`. Then `./build.sh`
and `./test.sh` build the component and run it in `tbgw converter test`.
"""

import tbgw


def create(config: dict):
    device_type = config.get("deviceType", "default")
    if not isinstance(device_type, str):
        raise tbgw.ConfigError("must be a string", field="deviceType")
    return {"device_type": device_type}


def convert(state, message: tbgw.Message):
    data = message.json()
    return tbgw.Update(
        device=data["serial"],
        device_type=state["device_type"],
        telemetry={"temperature": data["temperature"], "humidity": data["humidity"]},
    )
