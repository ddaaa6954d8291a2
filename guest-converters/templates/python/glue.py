"""What the uplink and downlink glue share: tbgw's log for `tbgw.log`,
the contract's raw message as a `tbgw.Message`, and `create` with its
errors as the contract's `config-error`. You should not need to edit this
file."""

import json

import converter
import tbgw
from componentize_py_types import Err
from wit_world.imports import log as wit_log
from wit_world.imports import types as t

_LEVELS = {
    "trace": wit_log.Level.TRACE,
    "debug": wit_log.Level.DEBUG,
    "info": wit_log.Level.INFO,
    "warn": wit_log.Level.WARN,
    "error": wit_log.Level.ERROR,
}
tbgw.log._set_sink(lambda level, message: wit_log.log(_LEVELS[level], message))


def message(raw: t.RawUplink) -> tbgw.Message:
    """A device's message (or answer) as the helper's `Message`."""
    topic = raw.source.value.topic if isinstance(raw.source, t.Source_Mqtt) else None
    return tbgw.Message(
        payload=raw.payload,
        topic=topic,
        device=raw.device,
        metadata=dict(raw.metadata),
        received_at=raw.received_at,
        source=raw.source,
    )


def create(config: str):
    """The converter's state from `converter.create`, or the contract's error."""
    try:
        return converter.create(json.loads(config))
    except tbgw.ConfigError as e:
        raise Err(t.ConfigError(field=e.field, message=e.message))
    except Exception as e:
        raise Err(t.ConfigError(field=None, message=tbgw.reason(e)))
