# The Python gateway's sample opcua.json's server: MyObject at
# opc.tcp://127.0.0.1:4840/freeopcua/server/ (asyncua 1.1.5).
import asyncio
from asyncua import Server, ua

async def main():
    server = Server()
    await server.init()
    server.set_endpoint("opc.tcp://127.0.0.1:4840/freeopcua/server/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace("http://examples.freeopcua.github.io")
    obj = await server.nodes.objects.add_object(ns, "MyObject")
    await obj.add_variable(ns, "Frequency", 50, ua.VariantType.Int32)
    await obj.add_variable(ns, "Power", 1200.5, ua.VariantType.Double)
    temp = await obj.add_variable(ns, "Temperature", 21.25, ua.VariantType.Float)
    await obj.add_variable(ns, "Humidity", 40, ua.VariantType.UInt16)
    relay = await obj.add_variable(ns, "Relay", False, ua.VariantType.Boolean)
    await relay.set_writable()
    async def multiply(parent, a, b):
        return [ua.Variant(a.Value * b.Value, ua.VariantType.Int64)]
    async def get_relay(parent):
        return [ua.Variant(await relay.read_value(), ua.VariantType.Boolean)]
    async def set_relay(parent):
        await relay.write_value(ua.Variant(True, ua.VariantType.Boolean))
        return [ua.Variant(True, ua.VariantType.Boolean)]
    await obj.add_method(ns, "multiply", multiply, [ua.VariantType.Int64, ua.VariantType.Int64], [ua.VariantType.Int64])
    await obj.add_method(ns, "get_relay", get_relay, [], [ua.VariantType.Boolean])
    await obj.add_method(ns, "set_relay", set_relay, [], [ua.VariantType.Boolean])
    async with server:
        t = 21.25
        while True:
            await asyncio.sleep(1)
            t += 0.5
            await temp.write_value(ua.Variant(t, ua.VariantType.Float))

asyncio.run(main())
