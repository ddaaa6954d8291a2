// The sensor example in JavaScript: a sensor's JSON report to ThingsBoard
// attributes (model, firmware, location) and telemetry (every reading, with
// its own type), at the report's own time when it says. The Rust and Python
// versions beside it give the same output (`../expected.jsonl`).

import { ConfigError, Double, Update } from './tbgw.js';

export function create(config) {
  const deviceType = config.deviceType ?? 'sensor';
  if (typeof deviceType !== 'string') throw new ConfigError('must be a string', 'deviceType');
  return { deviceType };
}

const isObject = (v) => typeof v === 'object' && v !== null && !Array.isArray(v) && !(v instanceof Double);

export function convert(state, message) {
  // message.json() keeps `19.0` a double, as Python and Rust do.
  const report = message.json();
  if (!isObject(report)) throw new Error('expected a JSON object');
  if (typeof report.serial !== 'string') throw new Error('missing `serial`');
  const ts = report.ts;
  if ('ts' in report && !Number.isInteger(ts)) throw new Error('`ts` must be ms since the epoch');
  const readings = 'readings' in report ? report.readings : {};
  if (!isObject(readings)) throw new Error('`readings` must be an object');
  const attributes = {};
  for (const key of ['model', 'firmware', 'location']) {
    if (key in report) attributes[key] = report[key];
  }
  return new Update({ device: report.serial, deviceType: state.deviceType, attributes, telemetry: readings, ts });
}
