// The JavaScript helper's own tests (`node --test`, run by
// tests/converter_languages.rs): how values map, and parseJson, fast path
// and exact parser alike, against JSON.parse.
import assert from 'node:assert/strict';
import { test } from 'node:test';
import { Double, Dropped, double, parseJson, parseJsonExact, valueOf } from '../templates/js/tbgw.js';

test('values map as ThingsBoard stores them', () => {
  assert.deepEqual(valueOf(true), { kind: 'boolean', value: true });
  assert.deepEqual(valueOf(19), { kind: 'integer', value: 19n });
  assert.deepEqual(valueOf(19.5), { kind: 'double', value: 19.5 });
  assert.deepEqual(valueOf(double(19)), { kind: 'double', value: 19 });
  assert.deepEqual(valueOf(2n ** 62n), { kind: 'integer', value: 2n ** 62n });
  assert.deepEqual(valueOf('x'), { kind: 'text', value: 'x' });
  assert.deepEqual(valueOf({ a: [1, 'b'] }), { kind: 'json', value: '{"a":[1,"b"]}' });
  for (const bad of [NaN, Infinity, -Infinity, null, undefined, 2n ** 63n, 1e20, double(NaN)]) {
    assert.throws(() => valueOf(bad), Dropped, String(bad));
  }
});

const cases = [
  '{"t": 19.0, "h": 48, "b": 3.31, "e": 1e2, "f": 1.5e1, "g": -0.0, "n": null, "s": "19.0", "k": {"19.0": [2.0, 3]}}',
  '[1, 2.5, "a\\"b\\\\", true, false, null, {}, []]',
  '  {"nested": {"deep": [{"x": 10.000}]}}  ',
  '"just text"',
  '42',
  '{"__proto__": 1}',
  '{"u": "\\u0000tbgw-double:5"}',
];

for (const parse of [parseJson, parseJsonExact]) {
  test(`${parse.name} gives JSON.parse's values, whole doubles as Doubles`, () => {
    for (const text of cases) {
      const plain = (v) =>
        v instanceof Double
          ? v.value
          : Array.isArray(v)
            ? v.map(plain)
            : v !== null && typeof v === 'object'
              ? Object.fromEntries(Object.entries(v).map(([k, x]) => [k, plain(x)]))
              : v;
      assert.deepEqual(plain(parse(text)), JSON.parse(text), text);
    }
    const v = parse(cases[0]);
    assert.ok(v.t instanceof Double && v.t.value === 19, 'a whole double');
    assert.ok(v.e instanceof Double && v.f instanceof Double, 'exponents');
    assert.equal(v.h, 48);
    assert.equal(v.b, 3.31);
    assert.equal(v.s, '19.0', 'a string is not a number');
    assert.ok(v.k['19.0'][0] instanceof Double && v.k['19.0'][1] === 3);
    assert.equal(parse(cases[6]).u, '\u0000tbgw-double:5', 'a string that spells the mark stays a string');
    assert.ok(Object.hasOwn(parse(cases[5]), '__proto__'));
  });

  test(`${parse.name} refuses what is not JSON`, () => {
    for (const bad of ['', '{', '{"a":}', '[1,]', '1 2', '{"a":1}x', '00', '01.0', '.5', "{'a': 1}", 'NaN']) {
      assert.throws(() => parse(bad), SyntaxError, bad);
    }
  });
}
