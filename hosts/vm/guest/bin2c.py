#!/usr/bin/python3
"""Turn a flat guest binary into a C file defining `const unsigned char NAME[]` and `const unsigned int NAME_len`,
so that ferry-vm carries its built-in guest without a path to find at run time. Build-time only."""
import sys

src, dst, name = sys.argv[1], sys.argv[2], sys.argv[3]
data = open(src, "rb").read()
with open(dst, "w") as f:
    f.write(f"/* Generated from {src.rsplit('/', 1)[-1]} by bin2c.py: the built-in guest image. Do not edit. */\n")
    f.write(f"const unsigned char {name}[{len(data)}] = {{\n")
    for i in range(0, len(data), 16):
        f.write("    " + ", ".join(f"0x{b:02x}" for b in data[i:i + 16]) + ",\n")
    f.write("};\n")
    f.write(f"const unsigned int {name}_len = {len(data)};\n")
