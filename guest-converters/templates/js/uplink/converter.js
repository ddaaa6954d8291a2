// Your converter: edit `create` and `convert`.
//
// `create` gets the converter's config (the `converter` object of the mapping
// in mqtt.json, parsed) once per instance; throw a `ConfigError` to name a
// field that is wrong. `convert` gets one device message and returns an
// `Update` (or an array of them, or null for nothing). Throw, or let an
// exception happen, to fail this message with its reason.
//
// Test the logic on Node.js: `node --test`. Then `./build.sh` and
// `./test.sh` build the component and run it in `tbgw converter test`.

import { ConfigError, Update } from './tbgw.js';

export function create(config) {
  const deviceType = config.deviceType ?? 'default';
  if (typeof deviceType !== 'string') throw new ConfigError('must be a string', 'deviceType');
  return { deviceType };
}

export function convert(state, message) {
  // message.json() keeps `19.0` a double; JSON.parse would make it 19.
  const data = message.json();
  if (typeof data.serial !== 'string') throw new Error('missing `serial`');
  return new Update({
    device: data.serial,
    deviceType: state.deviceType,
    telemetry: { temperature: data.temperature, humidity: data.humidity },
  });
}
