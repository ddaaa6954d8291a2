#!/usr/bin/env bash
# The Python gateway 3.8.5 and tbgw side by side on the Python gateway's own
# sample opcua.json, unchanged, against one asyncua 1.1.5 server holding the
# sample's MyObject (opc.tcp://127.0.0.1:4840/freeopcua/server/, the
# sample's URL), each gateway with a mosquitto of its own as ThingsBoard.
# Prints what each sent. A check by hand (the sample's fixed port), not a
# test: `bash connectors/opcua/python-gateway/run.sh` after `cargo build`.
set -euo pipefail
here=$(cd "$(dirname "$0")" && pwd)
root=$(cd "$here/../../.." && pwd)
work=$(mktemp -d)
trap 'kill $(jobs -p) 2>/dev/null || true' EXIT
py=$work/venv/bin/python
python3 -m venv "$work/venv"
"$work/venv/bin/pip" install -q thingsboard-gateway==3.8.5 asyncua==1.1.5
pkg=$("$py" -c 'import thingsboard_gateway, os; print(os.path.dirname(thingsboard_gateway.__file__))')
mkdir -p "$work/py/config" "$work/py/run" "$work/tb"
cp "$pkg/config/logs.json" "$pkg/config/opcua.json" "$work/py/config/"
cp "$pkg/config/opcua.json" "$work/tb/opcua.json"
"$py" - "$pkg/config/tb_gateway.json" "$work/py/config/tb_gateway.json" <<'PY'
import json, sys
c = json.load(open(sys.argv[1]))
t = c["thingsboard"]
t.update(host="127.0.0.1", port=18831, remoteConfiguration=False, security={"type": "accessToken", "accessToken": "py"})
t["statistics"]["enable"] = False
c["connectors"] = [{"type": "opcua", "name": "OPCUA", "configuration": "opcua.json"}]
json.dump(c, open(sys.argv[2], "w"), indent=2)
PY
cat > "$work/tb/tb_gateway.yaml" <<'YAML'
thingsboard:
  host: 127.0.0.1
  port: 18832
  security: {type: accessToken, accessToken: tb}
  statistics: {enable: false}
storage: {type: memory}
connectors:
  - {type: opcua, name: OPCUA, configuration: opcua.json}
YAML
mosquitto -p 18831 >/dev/null 2>&1 &
mosquitto -p 18832 >/dev/null 2>&1 &
"$py" "$here/server.py" >"$work/server.log" 2>&1 &
sleep 3
"$py" "$here/thingsboard.py" 18831 30 "$work/py.out" &
"$py" "$here/thingsboard.py" 18832 30 "$work/tb.out" &
sleep 1
(cd "$work/py/run" && TB_GW_CONFIG_DIR="$work/py/config" timeout 28 "$py" -c \
    'from thingsboard_gateway.tb_gateway import main; main()' >"$work/py/gw.log" 2>&1 || true) &
(cd "$work/tb" && timeout 27 "$root/target/debug/tbgw" run --config tb_gateway.yaml >"$work/tbgw.log" 2>&1 || true) &
sleep 31
echo "== the Python gateway sent"; cat "$work/py.out"
echo "== tbgw sent"; cat "$work/tb.out"
echo "(logs in $work)"
