#!/usr/bin/env python3
"""Atomic read-modify-write instructions executed per request, from a callgrind profile.

Usage: atomics.py CALLGRIND_OUT REQUESTS [TOP]

The profile must be made with `--dump-instr=yes` (instructions.sh does so): callgrind
then counts executions per instruction address. Each object file named in the profile
is disassembled with `objdump -d`; an instruction with a `lock` prefix, or an `xchg`
with a memory operand (implicitly locked), is an atomic read-modify-write. Uncontended,
each still costs several nanoseconds when they come back to back and orders the memory
accesses around it, which the instruction count does not show: nginx's worker does
about 7 per proxied request, a multi-threaded runtime's reference counts and wakers
many more.

Prints the total per request, then (with TOP > 0) the TOP functions doing the most,
with each one's share per request.
"""
import collections
import os
import re
import subprocess
import sys


def main():
    if len(sys.argv) not in (3, 4):
        sys.exit(__doc__)
    path, requests = sys.argv[1], float(sys.argv[2])
    top = int(sys.argv[3]) if len(sys.argv) == 4 else 0
    if requests <= 0:
        sys.exit("REQUESTS must be positive")
    executed, function = read_profile(path)
    total = collections.Counter()
    by_function = collections.Counter()
    for obj in sorted({o for o, _ in executed if o}):
        if not os.path.exists(obj):
            continue
        starts, atomic = disassemble(obj)
        addrs = [a for o, a in executed if o == obj]
        # Callgrind names addresses as the object file does (load offset removed);
        # check that before trusting the count.
        sample = addrs[:: max(1, len(addrs) // 500)]
        if not sample or sum(a in starts for a in sample) < 0.95 * len(sample):
            print(f"# {obj}: profile addresses do not match the disassembly; skipped",
                  file=sys.stderr)
            continue
        for (o, a), n in executed.items():
            if o == obj and a in atomic:
                total[obj] += n
                by_function[(os.path.basename(obj), function[(o, a)])] += n
    print(f"atomic RMW per request: {sum(total.values()) / requests:.1f}")
    if top:
        for obj, n in total.most_common():
            print(f"  {os.path.basename(obj)}: {n / requests:.1f}")
        for (obj, fn), n in by_function.most_common(top):
            print(f"{n / requests:8.2f}  {obj[:16]:16}  {fn[:150]}")


def read_profile(path):
    """(object, address) -> executions, and the function of each address."""
    names = {"ob": {}, "fn": {}}
    executed = collections.Counter()
    function = {}
    obj = fn = None
    last = 0
    after_call = False
    compressed = re.compile(r"\((\d+)\)(?: (.*))?")

    def name(kind, text):
        m = compressed.match(text)
        if not m:
            return text
        if m.group(2) is not None:
            names[kind][m.group(1)] = m.group(2)
        return names[kind].get(m.group(1), text)

    with open(path, errors="replace") as f:
        for line in f:
            line = line.rstrip("\n")
            if line.startswith("ob="):
                obj = name("ob", line[3:])
            elif line.startswith("cob="):
                name("ob", line[4:])
            elif line.startswith("fn="):
                fn = name("fn", line[3:])
            elif line.startswith("cfn="):
                name("fn", line[4:])
            elif line.startswith("calls="):
                # The next cost line is the call's inclusive cost, not this
                # instruction's executions.
                after_call = True
            elif line and line[0] in "0123456789+-*":
                fields = line.split()
                pos = fields[0]
                if pos == "*":
                    addr = last
                elif pos[0] in "+-":
                    addr = last + int(pos, 0)
                else:
                    addr = int(pos, 0)
                last = addr
                if after_call:
                    after_call = False
                    continue
                # positions: instr line; then the Ir count.
                if len(fields) >= 3:
                    executed[(obj, addr)] += int(fields[2])
                    function[(obj, addr)] = fn
    return executed, function


def disassemble(obj):
    """Instruction start addresses, and those of atomic read-modify-writes."""
    out = subprocess.run(["objdump", "-d", "--no-show-raw-insn", obj],
                         capture_output=True, text=True, check=True).stdout
    starts, atomic = set(), set()
    line = re.compile(r"^\s*([0-9a-f]+):\s+(\S+)(.*)$")
    for text in out.splitlines():
        m = line.match(text)
        if not m:
            continue
        addr = int(m.group(1), 16)
        starts.add(addr)
        op, rest = m.group(2), m.group(3)
        if op == "lock" or (op.startswith("xchg") and "(" in rest):
            atomic.add(addr)
    return starts, atomic


if __name__ == "__main__":
    main()
