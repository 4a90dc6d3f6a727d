"""The firmware's own MQTT client against the real broker, under micropython and CPython."""

import json

from tests.helpers import Observer, node_config, wait_until

CLIENT = """
import asyncio
from node.mqtt import MQTTClient, MQTTError
from node.port import port

async def main():
    c = MQTTClient({cid!r}, {host!r}, {port}, user={user!r}, password={pw!r}, keepalive={keepalive})
    try:
        await c.connect()
    except MQTTError as e:
        print("refused:", e)
        return
    print("connected")
{body}
    await c.disconnect()
    print("done")

asyncio.run(main())
"""


def client_script(broker, user, pw, body, keepalive=30):
    body = "\n".join("    " + line for line in body.strip().splitlines())
    return CLIENT.format(cid=user, host=broker.host, port=broker.port, user=user, pw=pw,
                         keepalive=keepalive, body=body)


def test_wrong_password_is_a_clear_error(fw, broker, device_credentials):
    device, _ = device_credentials()
    out = fw(client_script(broker, device, "not-the-password", "pass"))
    assert out.returncode == 0, out.stderr
    assert "refused: broker refused the connection: not authorized" in out.stdout


def test_wrong_password_on_the_node_console(runtime, broker, device_credentials, boards, tmp_path):
    device, _ = device_credentials()
    vb = boards(tmp_path / "vb", node_config(device, broker), {"user": device, "password": "wrong"},
                runtime=runtime).start()
    vb.wait_for(r"mqtt: broker refused the connection: not authorized.*\(CONNACK 5\)")
    assert "sent seq=" not in vb.console()


def test_qos1_publish_is_acknowledged(fw, broker, device_credentials):
    device, pw = device_credentials()
    obs = Observer(broker, [f"maille/v1/{device}/telemetry"])
    try:
        out = fw(client_script(broker, device, pw, f"""
await c.publish("maille/v1/{device}/telemetry", b'{{"seq": 1}}', qos=1)
print("acked")
"""))
        assert out.returncode == 0, out.stderr
        assert "acked" in out.stdout and "done" in out.stdout
        topic, payload, _ = obs.wait(lambda t, p: t.endswith("/telemetry"))
        assert json.loads(payload) == {"seq": 1}
    finally:
        obs.close()


def test_idle_connection_survives_more_than_twice_keepalive(fw, broker, device_credentials):
    device, pw = device_credentials()
    out = fw(client_script(broker, device, pw, f"""
await asyncio.sleep(5.5)
print("still connected:", c.connected, c.error)
await c.publish("maille/v1/{device}/health", b'{{}}', qos=1)
print("acked after idle")
""", keepalive=2), timeout=30)
    assert out.returncode == 0, out.stderr
    assert "still connected: True None" in out.stdout
    assert "acked after idle" in out.stdout
    assert f"Client {device} has exceeded timeout" not in broker.log_tail(200)


def test_lwt_is_delivered_when_the_node_is_killed(runtime, broker, device_credentials, boards, tmp_path):
    device, pw = device_credentials()
    state = f"maille/v1/{device}/state"
    obs = Observer(broker, [state])
    try:
        vb = boards(tmp_path / "vb", node_config(device, broker), {"user": device, "password": pw},
                    runtime=runtime).start()
        obs.wait(lambda t, p: json.loads(p)["state"] == "online")
        vb.wait_for(r"sent seq=0")
        vb.power_cut()
        _, payload, _ = obs.wait(lambda t, p: json.loads(p)["state"] == "offline", timeout=10)
        assert json.loads(payload) == {"state": "offline"}
    finally:
        obs.close()


def test_dead_link_is_noticed_within_one_and_a_half_keepalive(fw, broker, device_credentials):
    """The broker is still there but stops answering: SIGSTOP freezes it, a half-open link."""
    import os
    import signal
    import threading

    device, pw = device_credentials()
    frozen = threading.Timer(1.0, lambda: os.kill(broker.proc.pid, signal.SIGSTOP))
    frozen.start()
    try:
        out = fw(client_script(broker, device, pw, """
t0 = port.ticks_ms()
await c.dead.wait()
print("dead after ms:", port.ticks_diff(port.ticks_ms(), t0), c.error)
""", keepalive=2), timeout=30)
    finally:
        frozen.join()
        os.kill(broker.proc.pid, signal.SIGCONT)
    assert out.returncode == 0, out.stderr
    line = next(x for x in out.stdout.splitlines() if x.startswith("dead after ms:"))
    elapsed_ms = int(line.split()[3])
    assert "dead link" in line
    # frozen 1 s after connecting; must be noticed no later than 1.5 x keepalive (3 s) after that
    assert elapsed_ms <= 1000 + 3000 + 500, line
    wait_until(lambda: broker.proc.poll() is None)
