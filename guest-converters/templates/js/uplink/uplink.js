// The glue between your `converter.js` and the contract's uplink world
// (`wit/converter.wit`): the component's `uplink` export. You should not
// need to edit this file.
//
// Each message of a batch is converted on its own: an exception fails that
// message only, with the exception as its reason.

import { log as witLog } from 'tbgw:converter/log@0.2.0';
import * as converter from './converter.js';
import { ConfigError, Dropped, Message, reason, setLogSink, updatesOf, valueOf } from './tbgw.js';

setLogSink((level, message) => witLog(level, message));

function message(raw) {
  return new Message({
    payload: raw.payload,
    topic: raw.source.tag === 'mqtt' ? raw.source.val.topic : undefined,
    device: raw.device,
    metadata: new Map(raw.metadata),
    receivedAt: Number(raw.receivedAt),
    source: raw.source,
  });
}

/** The batch's key table: each key crosses the contract once. */
class Keys {
  constructor() {
    this.names = [];
    this.index = new Map();
  }
  of(key) {
    let i = this.index.get(key);
    if (i === undefined) {
      i = this.names.length;
      this.index.set(key, i);
      this.names.push(key);
    }
    return i;
  }
}

function entries(values, keys, dropped) {
  const out = [];
  for (const [key, v] of Object.entries(values)) {
    try {
      const { kind, value } = valueOf(v);
      out.push({ key: keys.of(key), value: { tag: kind, val: value } });
    } catch (e) {
      if (!(e instanceof Dropped)) throw e;
      dropped.push({ key, reason: e.message });
    }
  }
  return out;
}

function output(result, keys) {
  const updates = [];
  const dropped = [];
  for (const u of updatesOf(result)) {
    const attributes = entries(u.attributes, keys, dropped);
    const values = entries(u.telemetry, keys, dropped);
    const ts = u.ts === undefined || u.ts === null ? undefined : BigInt(u.ts);
    updates.push({
      device: String(u.device),
      deviceType: u.deviceType === undefined || u.deviceType === null ? undefined : String(u.deviceType),
      attributes,
      telemetry: values.length > 0 ? [{ ts, values }] : [],
    });
  }
  return { updates, requests: [], dropped };
}

class Converter {
  constructor(state) {
    this.state = state;
  }

  static create(config) {
    try {
      return new Converter(converter.create(JSON.parse(config)));
    } catch (e) {
      // A thrown value is the `config-error` of the result.
      if (e instanceof ConfigError) throw { field: e.field, message: e.message };
      throw { field: undefined, message: reason(e) };
    }
  }

  convert(batch) {
    const keys = new Keys();
    const results = batch.map((raw) => {
      try {
        return { tag: 'ok', val: output(converter.convert(this.state, message(raw)), keys) };
      } catch (e) {
        return { tag: 'err', val: { message: reason(e) } };
      }
    });
    return { keys: keys.names, results };
  }
}

export const uplink = { Converter };
