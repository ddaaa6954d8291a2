# A stand-in for ThingsBoard on a plain mosquitto: records every publish
# under v1/ (one JSON line each), answers getSessionLimits, and after 10 s
# sends the sample's RPCs and an attribute update to "Demo Device".
# Usage: thingsboard.py <broker port> <seconds> <out file>
import sys, time, json
import paho.mqtt.client as mqtt
port, seconds = int(sys.argv[1]), float(sys.argv[2])
out = open(sys.argv[3], "w")
def on_message(c, u, m):
    if m.topic.startswith("v1/devices/me/rpc/request/") and b"getSessionLimits" in m.payload:
        c.publish("v1/devices/me/rpc/response/" + m.topic.rsplit("/", 1)[1], '{"maxPayloadSize":65536,"maxInflightMessages":100,"rateLimits":{},"gatewayRateLimits":{}}', qos=1)
    out.write(json.dumps({"t": round(time.time(), 3), "topic": m.topic, "payload": m.payload.decode(errors="replace")}) + "\n"); out.flush()
c = mqtt.Client(mqtt.CallbackAPIVersion.VERSION1)
c.on_message = on_message
c.connect("127.0.0.1", port)
c.subscribe("v1/#", qos=1)
end = time.time() + seconds
sent = False
start = time.time()
while time.time() < end:
    c.loop(timeout=0.2)
    if not sent and time.time() - start > 10:
        sent = True
        for i, (m, p) in enumerate([("multiply", {}), ("get_relay", {}), ("set_relay", {}), ("multiply", [3, 5]), ("get", "Relay"), ("nosuch", {})]):
            c.publish("v1/gateway/rpc", json.dumps({"device": "Demo Device", "data": {"id": 100 + i, "method": m, "params": p}}), qos=1)
        c.publish("v1/gateway/attributes", json.dumps({"device": "Demo Device", "data": {"relay": False}}), qos=1)
