// Your converter: edit `create`, `convert` and `reply`.
//
// `create` gets the converter's config (the downlink converter's config in
// mqtt.json, parsed) once per instance; throw a `ConfigError` to name a field
// that is wrong. `convert` gets one request from ThingsBoard (an RPC, an
// attribute update) and returns the `Publish`es that serve it (an array, one,
// or null). `reply` makes ThingsBoard's reply to an RPC from what the device
// answered. Throw to fail that request: tbgw reports the reason to
// ThingsBoard.
//
// Test the logic on Node.js: `node --test`. Then `./build.sh` and
// `./test.sh` build the component and run it in `tbgw converter test`.

import { ConfigError, Publish, plainReply } from './tbgw.js';

export function create(config) {
  const prefix = config.topicPrefix ?? 'devices';
  if (typeof prefix !== 'string' || prefix === '') throw new ConfigError('must be a topic, such as `devices`', 'topicPrefix');
  return { prefix };
}

export function convert(state, request) {
  const base = `${state.prefix}/${request.device}`;
  if (request.kind === 'rpc') {
    const params = request.params;
    if (params !== null && (typeof params !== 'object' || Array.isArray(params))) {
      throw new Error(`params of \`${request.method}\` must be an object`);
    }
    // A two-way RPC: the device answers on .../rpc/response.
    return new Publish({
      topic: `${base}/rpc`,
      payload: { id: request.id, method: request.method, params },
      responseTopic: `${base}/rpc/response`,
    });
  }
  if (request.kind === 'attributes') return new Publish({ topic: `${base}/attributes`, payload: request.attributes });
  return new Publish({ topic: `${base}/attributes/response`, payload: request.attributes });
}

export function reply(state, request, answers) {
  return plainReply(answers);
}
