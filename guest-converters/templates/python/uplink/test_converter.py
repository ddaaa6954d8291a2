"""The converter's logic on plain CPython, without building the component:
`python3 -m unittest`."""

import unittest

import converter
import tbgw


class ConverterTest(unittest.TestCase):
    def test_reading(self):
        state = converter.create({"deviceType": "thermometer"})
        update = converter.convert(state, tbgw.Message(payload=b'{"serial": "SN-001", "temperature": 19.0, "humidity": 48}'))
        self.assertEqual(update.device, "SN-001")
        self.assertEqual(tbgw.value_of(update.telemetry["temperature"]), ("double", 19.0))
        self.assertEqual(tbgw.value_of(update.telemetry["humidity"]), ("integer", 48))

    def test_bad_config(self):
        with self.assertRaises(tbgw.ConfigError) as e:
            converter.create({"deviceType": 7})
        self.assertEqual(e.exception.field, "deviceType")


if __name__ == "__main__":
    unittest.main()
