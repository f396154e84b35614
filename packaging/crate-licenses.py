#!/usr/bin/env python3
"""Prints the crates linked into repd, repctl and cluster-agent (the normal,
non-dev dependencies of ublk-target and cluster-agent for this platform)
with their licenses: continuation lines of the Comment field of
/usr/share/doc/rep/copyright (scripts/package.sh puts them in place of the
line " @CRATES@")."""
import json
import subprocess
import sys

meta = json.loads(subprocess.run(
    ["cargo", "metadata", "--format-version", "1", "--locked",
     "--filter-platform", sys.argv[1] if len(sys.argv) > 1 else "x86_64-unknown-linux-gnu"],
    check=True, capture_output=True, text=True).stdout)
pkgs = {p["id"]: p for p in meta["packages"]}
nodes = {n["id"]: n for n in meta["resolve"]["nodes"]}
todo = [i for i, p in pkgs.items() if p["name"] in ("ublk-target", "cluster-agent")
        and i in meta["workspace_members"]]
seen = set()
while todo:
    i = todo.pop()
    if i in seen:
        continue
    seen.add(i)
    for d in nodes[i]["deps"]:
        if any(k["kind"] is None for k in d["dep_kinds"]):
            todo.append(d["pkg"])
rows = sorted((pkgs[i]["name"], pkgs[i]["version"], pkgs[i].get("license") or "see its sources")
              for i in seen if i not in meta["workspace_members"])
for name, ver, lic in rows:
    print(f" {name} {ver}: {lic}")
