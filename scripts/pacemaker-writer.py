#!/usr/bin/python3
"""The service of scripts/pacemaker-test.sh: writes numbered blocks through
the local node's NBD export and records each write the export acknowledged.

  pacemaker-writer.py run --uris alpha=nbd://...,beta=nbd://... --acked FILE
      Writes block seq at (seq % blocks) * 4 KiB with FUA, forever, from the
      seq after the last one in FILE; appends each acknowledged seq to FILE
      (the record survives the writer's death: the test runs it under
      Pacemaker with ocf:heartbeat:anything, and kills its node).
  pacemaker-writer.py check --uri nbd://... --acked FILE
      Reads the device through the export and checks that every
      acknowledged write is there: the block holds that seq or a later one
      for the same slot. Exit 0 only then.
"""

import argparse
import os
import socket
import struct
import sys
import time

import nbd

BLOCK_BYTES = 4096
MAGIC = b"REPWRITE"
# A small ring (8 MiB): two activity-log extents, so that a resync after a
# crash stays small and measurable.
BLOCKS = 2048
PAUSE_S = 0.01
CONNECT_TRIES = 30


def block(seq):
    head = MAGIC + struct.pack("<Q", seq)
    fill = struct.pack("<Q", seq * 2654435761 % (1 << 64))
    return head + fill * ((BLOCK_BYTES - len(head)) // len(fill))


def acked(path):
    try:
        with open(path, encoding="ascii") as f:
            return [int(line) for line in f if line.strip().isdigit()]
    except FileNotFoundError:
        return []


def connect(uri):
    last = None
    for _ in range(CONNECT_TRIES):
        h = nbd.NBD()
        try:
            h.connect_uri(uri)
            return h
        except nbd.Error as e:
            last = e
            time.sleep(1)
    sys.exit(f"pacemaker-writer: cannot connect to {uri}: {last}")


def run(args):
    me = socket.gethostname()
    uris = dict(kv.split("=", 1) for kv in args.uris.split(","))
    if me not in uris:
        sys.exit(f"pacemaker-writer: no URI for node {me} in --uris")
    h = connect(uris[me])
    done = acked(args.acked)
    seq = (max(done) + 1) if done else 0
    fd = os.open(args.acked, os.O_WRONLY | os.O_APPEND | os.O_CREAT, 0o644)
    print(f"pacemaker-writer on {me}: from seq {seq} via {uris[me]}", flush=True)
    while True:
        try:
            h.pwrite(block(seq), (seq % BLOCKS) * BLOCK_BYTES, nbd.CMD_FLAG_FUA)
        except nbd.Error as e:
            sys.exit(f"pacemaker-writer: write {seq} failed: {e}")
        # Acknowledged: record it (a plain write is enough, the record must
        # survive this process, not the host).
        os.write(fd, f"{seq}\n".encode())
        seq += 1
        time.sleep(PAUSE_S)


def check(args):
    done = acked(args.acked)
    h = connect(args.uri)
    # In 1 MiB requests: an NBD server limits the size of one request.
    chunk = 1 << 20
    data = b"".join(h.pread(chunk, off) for off in range(0, BLOCKS * BLOCK_BYTES, chunk))
    bad = 0
    for seq in done:
        slot = seq % BLOCKS
        got = data[slot * BLOCK_BYTES:(slot + 1) * BLOCK_BYTES]
        held = struct.unpack("<Q", got[8:16])[0] if got[:8] == MAGIC else -1
        ok = held >= seq and held % BLOCKS == slot and got == block(held)
        if not ok:
            bad += 1
            if bad <= 5:
                print(f"acknowledged write {seq} lost: slot {slot} holds {held}")
    print(f"checked {len(done)} acknowledged writes (last {max(done, default=-1)}): {bad} lost")
    return 1 if bad or not done else 0


def main():
    p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    sub = p.add_subparsers(dest="cmd", required=True)
    r = sub.add_parser("run")
    r.add_argument("--uris", required=True)
    r.add_argument("--acked", required=True)
    c = sub.add_parser("check")
    c.add_argument("--uri", required=True)
    c.add_argument("--acked", required=True)
    args = p.parse_args()
    sys.exit(run(args) if args.cmd == "run" else check(args))


if __name__ == "__main__":
    main()
