#!/usr/bin/env python3
"""Writes the hand-made seed inputs of the fuzz targets into corpus/<target>/
(run once before the first `cargo fuzz run`; the fuzzer adds the rest).

Layouts are those the targets decode: see fuzz_targets/*.rs."""
import json, os, struct

HERE = os.path.dirname(os.path.abspath(__file__))
NODE = "6bE4qJgBNZ9yHvc7u8VKBeCUTgShJ8gRyyyQqVRH3tyH"
USER = "4Gv4BkQpDRMM8PZnMPXWqcCV1r7pVM3nHGW9Gvh7Bbxs"
SIG = "A" * 86 + "=="

DATA = {
    "container": {"flist": "busybox:latest", "flist_storage": "", "env": {"A": "1"},
                  "secret_env": {"S": "00ff"}, "entrypoint": "sh -c 'sleep 10; echo \"x\"'",
                  "interactive": False, "mounts": [{"volume_id": "3-1", "mountpoint": "/data/./x/"}],
                  "network": {"network_id": "net", "ips": ["10.1.1.5"], "public_ip6": False},
                  "capacity": {"cpu": 1, "memory": 256},
                  "ports": [{"container_port": 80, "host_port": 8080, "protocol": "udp"}]},
    "volume": {"size": 1, "type": "SSD"},
    "network": {"name": "net", "ip_range": "10.1.0.0/16",
                "net_resources": [{"node_id": NODE, "subnet": "10.1.1.0/24", "wg_listen_port": 3}],
                "wireguard_private_key_encrypted": "x", "peers": []},
    "zdb": {"size": 2, "mode": "seq", "password": "abcd", "disk_type": "HDD", "public": True},
    "kubernetes": {"size": 1, "network_id": "net", "ip": "10.1.1.2", "cluster_secret": "00",
                   "master_ips": ["10.1.1.3", "::1"], "ssh_keys": ["ssh-ed25519 AAAA x"]},
    "debug": {"host": "127.0.0.1", "port": 514, "channel": "logs"},
}
TYPES = ["network", "volume", "zdb", "container", "kubernetes", "debug"]  # WorkloadType::ALL order


def reservation(i, kind, **kw):
    r = {"id": f"{i}-1", "node_id": NODE, "user_id": USER, "type": kind, "data": DATA.get(kind, {}),
         "created": "2026-11-25T11:00:00Z", "duration": 3600000000000, "signature": SIG,
         "to_delete": False}
    r.update(kw)
    return r


def write(target, name, data):
    d = os.path.join(HERE, "corpus", target)
    os.makedirs(d, exist_ok=True)
    if isinstance(data, str):
        data = data.encode()
    with open(os.path.join(d, "seed-" + name), "wb") as f:
        f.write(data)


# reservation_json: single reservations and poll answers.
for i, k in enumerate(TYPES + ["unknown"]):
    write("reservation_json", f"res-{k}", json.dumps(reservation(i + 1, k)))
write("reservation_json", "res-deleted",
      json.dumps(reservation(9, "volume", to_delete=True, delete_signature=SIG)))
write("reservation_json", "res-offset",
      json.dumps(reservation(10, "debug", created="2026-11-25T11:00:00.5+02:00", duration=-1)))
write("reservation_json", "poll",
      json.dumps([reservation(1, "volume"), {"id": "2-1", "bogus": 1}, reservation(1, "volume"),
                  reservation(3, "zdb")]))
write("reservation_json", "poll-empty", "[]")

# workload_data: one type byte, then data.
for i, k in enumerate(TYPES):
    write("workload_data", k, bytes([i]) + json.dumps(DATA[k]).encode())
write("workload_data", "mountpoint", b"\x03/data/../x")

# explorer_http: op, flags, [len, key] (only with key choice 0), body.
OPS = ["create", "show", "put_result", "delete", "poll", "results", "put_deleted",
       "register", "nodes", "uptime", "raw"]
op = {n: i for i, n in enumerate(OPS)}
SIGN, TO_NODE = 4, 8
KEY_INPUT, KEY_LAST, KEY_NODE, KEY_11 = 0, 1, 2, 3
for k in TYPES:
    r = reservation(0, k)
    del r["id"]
    write("explorer_http", f"create-{k}", bytes([op["create"], SIGN | TO_NODE | KEY_NODE]) + json.dumps(r).encode())
write("explorer_http", "create-unsigned", bytes([op["create"], KEY_NODE]) + json.dumps(reservation(0, "volume")).encode())
res = {"type": "volume", "id": "1-1", "created": "2026-11-25T11:00:03Z", "state": "ok", "error": "",
       "data": {"volume_id": "1-1"}, "signature": SIG}
write("explorer_http", "put-result", bytes([op["put_result"], SIGN | KEY_LAST]) + json.dumps(res).encode())
write("explorer_http", "put-result-error", bytes([op["put_result"], SIGN | KEY_LAST]) +
      json.dumps(dict(res, state="error", error="data.size: must be > 0 GiB", data=None)).encode())
write("explorer_http", "delete", bytes([op["delete"], SIGN | KEY_LAST]) + json.dumps({"delete_signature": SIG}).encode())
write("explorer_http", "delete-forged", bytes([op["delete"], KEY_11]) + json.dumps({"delete_signature": SIG}).encode())
write("explorer_http", "show", bytes([op["show"], KEY_LAST]))
write("explorer_http", "results", bytes([op["results"], KEY_LAST]))
write("explorer_http", "deleted", bytes([op["put_deleted"], KEY_LAST]))
write("explorer_http", "poll0", bytes([op["poll"], KEY_NODE]) + b"from=0")
write("explorer_http", "poll1", bytes([op["poll"], KEY_NODE]) + b"from=1")
write("explorer_http", "poll-bad", bytes([op["poll"], KEY_INPUT, 3]) + b"abcfrom=-1")
reg = {"node_id": NODE, "url": "http://127.0.0.1:1", "capacity": {"cru": 2, "mru": 1.5, "sru": 10, "hru": 0}}
write("explorer_http", "register", bytes([op["register"], SIGN | KEY_11]) + json.dumps(reg).encode())
write("explorer_http", "nodes", bytes([op["nodes"], KEY_11]))
write("explorer_http", "uptime", bytes([op["uptime"], KEY_NODE]) +
      json.dumps({"uptime": 12.5, "used": {"cru": 1, "mru": 0.5, "sru": 0, "hru": 0}}).encode())
write("explorer_http", "raw", bytes([op["raw"], KEY_11]) + b"PATCH /reservations/1-1/poll?from=1\n{}")
