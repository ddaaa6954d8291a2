"""The glue between your `converter.py` and the contract's uplink world
(`wit/converter.wit`): componentize-py looks for the exported interface's
resource here, as `uplink.Converter`. You should not need to edit this file.

Each message of a batch is converted on its own: an exception fails that
message only, with the exception (and where in your code) as its reason.
"""

import converter
import glue
import tbgw
from componentize_py_types import Err, Ok
from wit_world.imports import types as t

_VALUES = {
    "boolean": t.Value_Boolean,
    "integer": t.Value_Integer,
    "double": t.Value_Double,
    "text": t.Value_Text,
    "json": t.Value_Json,
}


class _Keys:
    """The batch's key table: each key crosses the contract once."""

    def __init__(self):
        self.names = []
        self.index = {}

    def of(self, key) -> int:
        key = str(key)
        i = self.index.get(key)
        if i is None:
            i = self.index[key] = len(self.names)
            self.names.append(key)
        return i


def _entries(values: dict, keys: _Keys, dropped: list) -> list:
    entries = []
    for key, v in values.items():
        try:
            kind, value = tbgw.value_of(v)
        except tbgw.Dropped as e:
            dropped.append(t.Dropped(key=str(key), reason=str(e)))
            continue
        entries.append(t.Entry(key=keys.of(key), value=_VALUES[kind](value)))
    return entries


def _output(result, keys: _Keys) -> t.UplinkOutput:
    updates, dropped = [], []
    for u in tbgw.updates_of(result):
        attributes = _entries(u.attributes, keys, dropped)
        values = _entries(u.telemetry, keys, dropped)
        if u.ts is not None and (isinstance(u.ts, bool) or not isinstance(u.ts, int) or not tbgw.INT64_MIN <= u.ts <= tbgw.INT64_MAX):
            raise ValueError(f"the update's ts {u.ts!r} is not ms since the epoch")
        telemetry = [t.Telemetry(ts=u.ts, values=values)] if values else []
        updates.append(t.DeviceUpdate(device=str(u.device), device_type=None if u.device_type is None else str(u.device_type), attributes=attributes, telemetry=telemetry))
    return t.UplinkOutput(updates=updates, requests=[], dropped=dropped)


class Converter:
    def __init__(self, state):
        self.state = state

    @classmethod
    def create(cls, config: str) -> "Converter":
        return cls(glue.create(config))

    def convert(self, batch: list) -> t.UplinkResults:
        keys = _Keys()
        results = []
        for raw in batch:
            try:
                results.append(Ok(_output(converter.convert(self.state, glue.message(raw)), keys)))
            except Exception as e:
                results.append(Err(t.ConvertError(message=tbgw.reason(e))))
        return t.UplinkResults(keys=keys.names, results=results)
