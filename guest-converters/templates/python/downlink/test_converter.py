"""The converter's logic on plain CPython, without building the component:
`python3 -m unittest`."""

import unittest

import converter
import tbgw


class ConverterTest(unittest.TestCase):
    def test_rpc(self):
        state = converter.create({"topicPrefix": "devices"})
        publish = converter.convert(state, tbgw.Request(kind="rpc", device="SN-001", id=1, method="setInterval", params={"seconds": 5}))
        self.assertEqual(publish.topic, "devices/SN-001/rpc")
        self.assertEqual(publish.response_topic, "devices/SN-001/rpc/response")
        self.assertEqual(publish.payload_bytes(), b'{"id":1,"method":"setInterval","params":{"seconds":5}}')

    def test_reply(self):
        state = converter.create({})
        request = tbgw.Request(kind="rpc", device="SN-001", id=1, method="getInterval")
        self.assertEqual(converter.reply(state, request, [tbgw.Message(payload=b'{"seconds": 5}')]), {"seconds": 5})
        self.assertEqual(converter.reply(state, request, []), {"success": True})


if __name__ == "__main__":
    unittest.main()
