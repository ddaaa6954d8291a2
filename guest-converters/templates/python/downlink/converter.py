"""Your converter: edit `create`, `convert` and `reply`.

`create` gets the converter's config (the downlink converter's config in
mqtt.json, as a dict) once per instance; raise `tbgw.ConfigError` to name a
field that is wrong. `convert` gets one request from ThingsBoard (an RPC, an
attribute update) and returns the `Publish`es that serve it (a list, one, or
None). `reply` makes ThingsBoard's reply to an RPC from what the device
answered. Raise an exception to fail that request: tbgw reports its reason
to ThingsBoard.

Test the logic on plain CPython: `python3 -m unittest`. Then `./build.sh`
and `./test.sh` build the component and run it in `tbgw converter test`.
"""

import tbgw


def create(config: dict):
    prefix = config.get("topicPrefix", "devices")
    if not isinstance(prefix, str) or not prefix:
        raise tbgw.ConfigError("must be a topic, such as `devices`", field="topicPrefix")
    return {"prefix": prefix}


def convert(state, request: tbgw.Request):
    base = f"{state['prefix']}/{request.device}"
    if request.kind == "rpc":
        if request.params is not None and not isinstance(request.params, dict):
            raise ValueError(f"params of `{request.method}` must be an object")
        # A two-way RPC: the device answers on .../rpc/response.
        return tbgw.Publish(
            topic=f"{base}/rpc",
            payload={"id": request.id, "method": request.method, "params": request.params},
            response_topic=f"{base}/rpc/response",
        )
    if request.kind == "attributes":
        return tbgw.Publish(topic=f"{base}/attributes", payload=request.attributes)
    return tbgw.Publish(topic=f"{base}/attributes/response", payload=request.attributes)


def reply(state, request: tbgw.Request, answers: list):
    return tbgw.plain_reply(answers)
