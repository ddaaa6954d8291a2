"""The Python helper's own tests (`python3 -m unittest`, run by
tests/converter_languages.rs): how values map, how errors read."""

import math
import sys
import unittest
from pathlib import Path

sys.path.insert(0, str(Path(__file__).resolve().parent.parent / "templates" / "python"))

import tbgw  # noqa: E402


class ValuesTest(unittest.TestCase):
    def test_values_map_as_thingsboard_stores_them(self):
        self.assertEqual(tbgw.value_of(True), ("boolean", True))
        self.assertEqual(tbgw.value_of(19), ("integer", 19))
        self.assertEqual(tbgw.value_of(19.0), ("double", 19.0))
        self.assertEqual(tbgw.value_of(2**63 - 1), ("integer", 2**63 - 1))
        self.assertEqual(tbgw.value_of("x"), ("text", "x"))
        self.assertEqual(tbgw.value_of({"a": [1, "ü"]}), ("json", '{"a":[1,"ü"]}'))
        self.assertEqual(tbgw.value_of((1, 2)), ("json", "[1,2]"))
        for bad in [math.nan, math.inf, -math.inf, None, 2**63, -(2**63) - 1, {"a": math.nan}, object()]:
            with self.assertRaises(tbgw.Dropped, msg=repr(bad)):
                tbgw.value_of(bad)

    def test_reasons_name_only_lines_of_the_project(self):
        # This file is not in the project's directory (tbgw.py's), as the
        # standard library is not: its lines are not named.
        try:
            {}["serial"]
        except KeyError as e:
            self.assertEqual(tbgw.reason(e), "missing key 'serial'")
        try:
            int("x")
        except ValueError as e:
            self.assertEqual(tbgw.reason(e), "ValueError: invalid literal for int() with base 10: 'x'")

    def test_updates_and_publishes(self):
        u = tbgw.Update(device="d")
        self.assertEqual(tbgw.updates_of(u), [u])
        self.assertEqual(tbgw.updates_of(None), [])
        with self.assertRaises(TypeError):
            tbgw.updates_of({"device": "d"})
        self.assertEqual(tbgw.Publish(topic="t", payload={"a": 1}).payload_bytes(), b'{"a":1}')
        self.assertEqual(tbgw.plain_reply([]), {"success": True})
        self.assertEqual(tbgw.plain_reply([tbgw.Message(payload=b"not json")]), "not json")


if __name__ == "__main__":
    unittest.main()
