#!/usr/bin/env python3
# `ip netns add nftm; ip netns exec nftm python3 agent/benches/nft_writer.py` (root, nftables 1.0+):
# the figures of docs/agent.md, "NAT outgoing", that chose how kernel/nft.rs talks to the kernel.
# Measures one nftables batch applied three ways, in a scratch network namespace:
#   cli-text: `nft -f -` with the text batch (what the agent's writer does)
#   cli-json: `nft -j -f -` with the same batch in JSON
#   in-process: libnftables (the library `nft` is built on) called in this process: no fork/exec; it
#               parses the text and sends the netlink messages, as a hand-written netlink encoder would.
# Each batch: N set elements added, then deleted (so the table returns to where it was), plus a read
# (`list table` JSON), repeated R times; median and p90 in ms.
import ctypes, json, subprocess, sys, time, statistics

N_LIST = [1, 100, 1000]
R = 30
T = "inet tbm"

lib = ctypes.CDLL("libnftables.so.1")
lib.nft_ctx_new.restype = ctypes.c_void_p
lib.nft_ctx_new.argtypes = [ctypes.c_uint32]
lib.nft_run_cmd_from_buffer.argtypes = [ctypes.c_void_p, ctypes.c_char_p]
lib.nft_ctx_buffer_output.argtypes = [ctypes.c_void_p]
lib.nft_ctx_buffer_error.argtypes = [ctypes.c_void_p]
lib.nft_ctx_output_set_flags.argtypes = [ctypes.c_void_p, ctypes.c_uint]
ctx = lib.nft_ctx_new(0)
lib.nft_ctx_buffer_output(ctx)
lib.nft_ctx_buffer_error(ctx)

def inproc(text):
    rc = lib.nft_run_cmd_from_buffer(ctx, text.encode())
    assert rc == 0, text[:200]

def cli(args, data):
    p = subprocess.run(["nft"] + args, input=data.encode(), capture_output=True)
    assert p.returncode == 0, p.stderr

setup = f"""add table {T}
add set {T} s4 {{ type ipv4_addr; flags interval; }}
add chain {T} post {{ type nat hook postrouting priority 100; policy accept; }}
add rule {T} post ip saddr @s4 masquerade comment "tabby:1"
"""
subprocess.run(["nft", "delete", "table", "inet", "tbm"], capture_output=True)
inproc(setup)

def elems(n):
    return [f"10.{i // 250}.{i % 250}.0/24" for i in range(n)]

def text_batch(op, n):
    return f"{op} element {T} s4 {{ {', '.join(elems(n))} }}\n"

def json_batch(op, n):
    items = []
    for e in elems(n):
        a, l = e.split("/")
        items.append({"prefix": {"addr": a, "len": int(l)}})
    return json.dumps({"nftables": [{op: {"element": {"family": "inet", "table": "tbm", "name": "s4", "elem": items}}}]})

def timed(f):
    t = time.perf_counter(); f(); return (time.perf_counter() - t) * 1000

def stats(v):
    v = sorted(v)
    return f"{statistics.median(v):7.2f} {v[int(len(v) * 0.9)]:7.2f}"

print(f"{'elements':>9} {'way':<11} {'apply ms (p50 p90)':>20}")
for n in N_LIST:
    for name, add, dele in [
        ("cli-text", lambda: cli(["-f", "-"], text_batch("add", n)), lambda: cli(["-f", "-"], text_batch("delete", n))),
        ("cli-json", lambda: cli(["-j", "-f", "-"], json_batch("add", n)), lambda: cli(["-j", "-f", "-"], json_batch("delete", n))),
        ("in-process", lambda: inproc(text_batch("add", n)), lambda: inproc(text_batch("delete", n))),
    ]:
        ts = []
        for _ in range(R):
            ts.append(timed(add)); dele()
        print(f"{n:>9} {name:<11} {stats(ts):>20}")
reads = [timed(lambda: cli(["-j", "list", "table", "inet", "tbm"], "")) for _ in range(R)]
print(f"{'read':>9} {'cli-json':<11} {stats(reads):>20}")
lib.nft_ctx_output_set_flags(ctx, 1 << 4)  # NFT_CTX_OUTPUT_JSON
reads = [timed(lambda: inproc("list table inet tbm")) for _ in range(R)]
print(f"{'read':>9} {'in-process':<11} {stats(reads):>20}")
subprocess.run(["nft", "delete", "table", "inet", "tbm"], capture_output=True)
