// The converter's logic on Node.js, without building the component: `node --test`.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as converter from './converter.js';
import { Message, Request } from './tbgw.js';

test('an RPC is a two-way publish', () => {
  const state = converter.create({ topicPrefix: 'devices' });
  const p = converter.convert(state, new Request({ kind: 'rpc', device: 'SN-001', id: 1, method: 'setInterval', params: { seconds: 5 } }));
  assert.equal(p.topic, 'devices/SN-001/rpc');
  assert.equal(p.responseTopic, 'devices/SN-001/rpc/response');
  assert.equal(new TextDecoder().decode(p.payloadBytes()), '{"id":1,"method":"setInterval","params":{"seconds":5}}');
});

test('the reply is the answer', () => {
  const state = converter.create({});
  const request = new Request({ kind: 'rpc', device: 'SN-001', id: 1, method: 'getInterval' });
  assert.deepEqual(converter.reply(state, request, [new Message({ payload: '{"seconds": 5}' })]), { seconds: 5 });
  assert.deepEqual(converter.reply(state, request, []), { success: true });
});
