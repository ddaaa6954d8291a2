//! An independent OPC-UA server: Python `asyncua` 1.1.5 (the version the
//! Python gateway's OPC-UA connector pins), from PyPI in a venv of its own
//! under `target/tmp`, made once, in a process of its own on 127.0.0.1.
//!
//! Its plant is the in-process one's shape ([`crate::opcua`]):
//! `Objects/Plant/Boiler <n>` objects, each with `SerialNumber` (`SN-<n>`),
//! `Temperature` (Double 20.5), a writable `SetPoint` (Int16 50), a
//! `Counter` (UInt32 0), `Reading` (a structure of the server's own type
//! `Reading {Level: Double, Unit: String, Samples: [Int32]}`, its
//! definition published; `{1.5, "m", [1, 2, 3]}`), `Levels` (an array of
//! Doubles, `[1.5, 2.5]`) and the method `multiply(Int32, Int32) -> Int32`,
//! which refuses other argument types as a strict server does. The test
//! drives it with JSON lines on its stdin: read a value back with its
//! Variant type ([`AsyncuaServer::get`]), count every device's `Counter`
//! up ([`AsyncuaServer::count`]), set a `Reading`'s level
//! ([`AsyncuaServer::reading`]); and as a process: freeze it and let it go
//! on ([`AsyncuaServer::freeze`], [`AsyncuaServer::thaw`]), as a hung
//! server or a half-open link looks to a client.

use serde_json::{Value, json};
use std::io::{BufRead, BufReader, Write};
use std::process::{Child, ChildStdin, Command, Stdio};
use std::sync::mpsc;
use std::time::Duration;

/// The server's script.
const SERVER: &str = r#"
import asyncio, json, sys
from asyncua import Server, ua
from asyncua.common.structures104 import new_struct, new_struct_field

port, devices = int(sys.argv[1]), int(sys.argv[2])

def say(obj):
    sys.stdout.write(json.dumps(obj) + "\n")
    sys.stdout.flush()

async def multiply(parent, a, b):
    if a.VariantType != ua.VariantType.Int32 or b.VariantType != ua.VariantType.Int32:
        raise ua.UaStatusCodeError(ua.StatusCodes.BadTypeMismatch)
    return [ua.Variant(a.Value * b.Value, ua.VariantType.Int32)]

async def main():
    server = Server()
    await server.init()
    server.set_endpoint(f"opc.tcp://127.0.0.1:{port}/")
    server.set_security_policy([ua.SecurityPolicyType.NoSecurity])
    ns = await server.register_namespace("urn:tbgw:test:asyncua")
    plant = await server.nodes.objects.add_folder(ns, "Plant")
    # A structure of the server's own type, its definition published.
    reading, _ = await new_struct(server, ns, "Reading", [
        new_struct_field("Level", ua.VariantType.Double),
        new_struct_field("Unit", ua.VariantType.String),
        new_struct_field("Samples", ua.VariantType.Int32, array=True),
    ])
    await server.load_data_type_definitions()
    def a_reading(level):
        value = ua.Reading(Level=level, Unit="m", Samples=[1, 2, 3])
        return ua.Variant(value, ua.VariantType.ExtensionObject)
    nodes = {}
    for d in range(1, devices + 1):
        dev = await plant.add_object(ns, f"Boiler {d}")
        nodes[(d, "SerialNumber")] = await dev.add_variable(ns, "SerialNumber", f"SN-{d}")
        nodes[(d, "Temperature")] = await dev.add_variable(ns, "Temperature", 20.5)
        setpoint = await dev.add_variable(ns, "SetPoint", 50, ua.VariantType.Int16)
        await setpoint.set_writable()
        nodes[(d, "SetPoint")] = setpoint
        nodes[(d, "Counter")] = await dev.add_variable(ns, "Counter", 0, ua.VariantType.UInt32)
        nodes[(d, "Reading")] = await dev.add_variable(ns, "Reading", a_reading(1.5), datatype=reading.nodeid)
        nodes[(d, "Levels")] = await dev.add_variable(ns, "Levels", [1.5, 2.5], ua.VariantType.Double)
        await dev.add_method(ns, "multiply", multiply, [ua.VariantType.Int32, ua.VariantType.Int32],
                             [ua.VariantType.Int32])
    async with server:
        say({"ready": True, "ns": ns})
        loop = asyncio.get_running_loop()
        while True:
            line = await loop.run_in_executor(None, sys.stdin.readline)
            if not line:
                return
            cmd = json.loads(line)
            if "get" in cmd:
                d, name = cmd["get"]
                v = await nodes[(d, name)].read_data_value()
                say({"value": v.Value.Value, "type": v.Value.VariantType.name})
            elif "count" in cmd:
                c = cmd["count"]
                for i in range(1, c["to"] + 1):
                    for d in range(1, devices + 1):
                        await nodes[(d, "Counter")].write_value(ua.Variant(i, ua.VariantType.UInt32))
                    await asyncio.sleep(c["every_ms"] / 1000)
                say({"counted": c["to"]})
            elif "reading" in cmd:
                d, level = cmd["reading"]
                await nodes[(d, "Reading")].write_value(a_reading(level))
                say({"done": True})

asyncio.run(main())
"#;

/// A running asyncua server; stopped when dropped.
pub struct AsyncuaServer {
    pub port: u16,
    /// The plant's namespace index.
    pub ns: u16,
    child: Child,
    stdin: ChildStdin,
    lines: mpsc::Receiver<Value>,
}

impl AsyncuaServer {
    /// A server of `devices` boilers on a free port.
    pub fn start(devices: usize) -> AsyncuaServer {
        let python = crate::python_venv("asyncua-1.1.5", &["asyncua==1.1.5"]);
        let port = crate::free_port();
        let mut child = Command::new(python)
            .args(["-c", SERVER, &port.to_string(), &devices.to_string()])
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .stderr(Stdio::inherit())
            .spawn()
            .expect("start the asyncua server");
        let stdin = child.stdin.take().expect("stdin");
        let stdout = child.stdout.take().expect("stdout");
        let (tx, lines) = mpsc::channel();
        std::thread::spawn(move || {
            for line in BufReader::new(stdout).lines().map_while(Result::ok) {
                if let Ok(v) = serde_json::from_str::<Value>(&line)
                    && tx.send(v).is_err()
                {
                    return;
                }
            }
        });
        let ready = lines.recv_timeout(Duration::from_secs(60)).expect("the asyncua server starts");
        assert_eq!(ready["ready"], true, "{ready}");
        let ns = ready["ns"].as_u64().expect("its namespace") as u16;
        AsyncuaServer { port, ns, child, stdin, lines }
    }

    pub fn url(&self) -> String {
        format!("opc.tcp://127.0.0.1:{}/", self.port)
    }

    fn ask(&mut self, command: Value) -> Value {
        writeln!(self.stdin, "{command}").and_then(|_| self.stdin.flush()).expect("a command to the asyncua server");
        self.lines.recv_timeout(Duration::from_secs(60)).expect("the asyncua server answers")
    }

    /// `variable` of device `d` (from 1): its value and its Variant type's name.
    pub fn get(&mut self, d: usize, variable: &str) -> (Value, String) {
        let v = self.ask(json!({"get": [d, variable]}));
        (v["value"].clone(), v["type"].as_str().unwrap_or_default().to_owned())
    }

    /// Every device's `Counter` from 1 to `to`, a step every `every_ms`;
    /// returns when done.
    pub fn count(&mut self, to: u32, every_ms: u64) {
        let v = self.ask(json!({"count": {"to": to, "every_ms": every_ms}}));
        assert_eq!(v["counted"], to, "{v}");
    }

    /// Device `d`'s `Reading` to `{level, "m", [1, 2, 3]}`.
    pub fn reading(&mut self, d: usize, level: f64) {
        let v = self.ask(json!({"reading": [d, level]}));
        assert_eq!(v["done"], true, "{v}");
    }

    /// Stop the process (SIGSTOP): its sockets stay open, nothing answers.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Let a frozen process go on (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    fn signal(&self, which: &str) {
        let status = Command::new("kill").args([which, &self.child.id().to_string()]).status().expect("kill");
        assert!(status.success(), "kill {which} the asyncua server");
    }
}

impl Drop for AsyncuaServer {
    fn drop(&mut self) {
        // A frozen process is not killed until it may go on.
        let _ = Command::new("kill").args(["-CONT", &self.child.id().to_string()]).status();
        let _ = self.child.kill();
        let _ = self.child.wait();
    }
}
