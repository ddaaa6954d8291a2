// The glue between your `converter.js` and the contract's downlink world
// (`wit/converter.wit`): the component's `downlink` export. You should not
// need to edit this file.
//
// Each request of a batch is converted on its own: an exception fails that
// request only, and tbgw reports its reason to ThingsBoard.

import { log as witLog } from 'tbgw:converter/log@0.2.0';
import * as converter from './converter.js';
import { ConfigError, Message, Request, parseJson, publishesOf, reason, setLogSink } from './tbgw.js';

setLogSink((level, message) => witLog(level, message));

/** A contract value as JavaScript: integers as Numbers when they are exact,
 * JSON values parsed. */
function native({ tag, val }) {
  if (tag === 'integer') return val >= -(2n ** 53n) && val <= 2n ** 53n ? Number(val) : val;
  if (tag === 'json') return parseJson(val);
  return val;
}

function attributes(list) {
  return Object.fromEntries(list.map((a) => [a.key, native(a.value)]));
}

function request({ tag, val }) {
  if (tag === 'rpc') {
    return new Request({ kind: 'rpc', device: val.device, id: Number(val.id), method: val.method, params: parseJson(val.params) });
  }
  if (tag === 'attribute-update') {
    return new Request({ kind: 'attributes', device: val.device, attributes: attributes(val.attributes) });
  }
  return new Request({
    kind: 'attribute-response',
    device: val.device,
    attributes: attributes(val.values),
    keys: val.keys,
    context: val.context,
  });
}

function publish(p) {
  const response =
    p.responseTopic === undefined || p.responseTopic === null
      ? undefined
      : { topic: p.responseTopic, qos: p.qos, timeoutMs: p.responseTimeoutMs };
  return { tag: 'mqtt', val: { topic: p.topic, payload: p.payloadBytes(), qos: p.qos, retain: p.retain, response } };
}

function answer(raw) {
  return new Message({
    payload: raw.payload,
    topic: raw.source.tag === 'mqtt' ? raw.source.val.topic : undefined,
    device: raw.device,
    metadata: new Map(raw.metadata),
    receivedAt: Number(raw.receivedAt),
    source: raw.source,
  });
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
    return batch.map((r) => {
      try {
        return { tag: 'ok', val: publishesOf(converter.convert(this.state, request(r))).map(publish) };
      } catch (e) {
        return { tag: 'err', val: { message: reason(e) } };
      }
    });
  }

  reply(batch) {
    return batch.map((a) => {
      try {
        const data = converter.reply(this.state, request({ tag: 'rpc', val: a.request }), a.answers.map(answer));
        return { tag: 'ok', val: JSON.stringify(data) };
      } catch (e) {
        return { tag: 'err', val: { message: reason(e) } };
      }
    });
  }
}

export const downlink = { Converter };
