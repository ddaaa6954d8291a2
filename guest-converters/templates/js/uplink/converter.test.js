// The converter's logic on Node.js, without building the component: `node --test`.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import * as converter from './converter.js';
import { ConfigError, Message, valueOf } from './tbgw.js';

test('a reading', () => {
  const state = converter.create({ deviceType: 'thermometer' });
  const u = converter.convert(state, new Message({ payload: '{"serial": "SN-001", "temperature": 19.0, "humidity": 48}' }));
  assert.equal(u.device, 'SN-001');
  assert.deepEqual(valueOf(u.telemetry.temperature), { kind: 'double', value: 19 });
  assert.deepEqual(valueOf(u.telemetry.humidity), { kind: 'integer', value: 48n });
});

test('a bad config names the field', () => {
  assert.throws(() => converter.create({ deviceType: 7 }), (e) => e instanceof ConfigError && e.field === 'deviceType');
});
