"""The glue between your `converter.py` and the contract's downlink world
(`wit/converter.wit`): componentize-py looks for the exported interface's
resource here, as `downlink.Converter`. You should not need to edit this file.

Each request of a batch is converted on its own: an exception fails that
request only, and tbgw reports its reason to ThingsBoard.
"""

import json

import converter
import glue
import tbgw
from componentize_py_types import Err, Ok
from wit_world.imports import types as t

def _native(value):
    """A contract value as Python: JSON values parsed."""
    if isinstance(value, t.Value_Json):
        return json.loads(value.value)
    return value.value


def _attributes(attributes: list) -> dict:
    return {a.key: _native(a.value) for a in attributes}


def _request(r) -> tbgw.Request:
    v = r.value
    if isinstance(r, t.DownlinkRequest_Rpc):
        return tbgw.Request(kind="rpc", device=v.device, id=v.id, method=v.method, params=json.loads(v.params))
    if isinstance(r, t.DownlinkRequest_AttributeUpdate):
        return tbgw.Request(kind="attributes", device=v.device, attributes=_attributes(v.attributes))
    return tbgw.Request(
        kind="attribute-response", device=v.device, attributes=_attributes(v.values), keys=list(v.keys), context=v.context
    )


def _publish(p: tbgw.Publish) -> t.DownlinkMessage_Mqtt:
    response = None
    if p.response_topic is not None:
        response = t.MqttResponse(topic=p.response_topic, qos=p.qos, timeout_ms=p.response_timeout_ms)
    return t.DownlinkMessage_Mqtt(
        t.MqttPublish(topic=p.topic, payload=p.payload_bytes(), qos=p.qos, retain=p.retain, response=response)
    )


class Converter:
    def __init__(self, state):
        self.state = state

    @classmethod
    def create(cls, config: str) -> "Converter":
        return cls(glue.create(config))

    def convert(self, batch: list) -> list:
        results = []
        for r in batch:
            try:
                messages = tbgw.publishes_of(converter.convert(self.state, _request(r)))
                results.append(Ok([_publish(p) for p in messages]))
            except Exception as e:
                results.append(Err(t.ConvertError(message=tbgw.reason(e))))
        return results

    def reply(self, batch: list) -> list:
        results = []
        for a in batch:
            try:
                request = _request(t.DownlinkRequest_Rpc(a.request))
                data = converter.reply(self.state, request, [glue.message(raw) for raw in a.answers])
                results.append(Ok(json.dumps(data, allow_nan=False, separators=(",", ":"))))
            except Exception as e:
                results.append(Err(t.ConvertError(message=tbgw.reason(e))))
        return results
