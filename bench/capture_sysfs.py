"""Copy the hardware-monitoring parts of this machine's sysfs into a fixture tree.

    python3 bench/capture_sysfs.py OUTDIR

Copies /sys/class/{hwmon,thermal,powercap,net,infiniband}: each entry's readable attribute
files (a few levels deep, symlinked device directories resolved once, no loops), as plain
files and directories, so collector tests can point --sysfs at OUTDIR/sys. Also copies
/proc/net/dev. Files that cannot be read (permissions, EIO) are skipped and listed.
"""

from __future__ import annotations

import os
import sys
from pathlib import Path

CLASSES = ("hwmon", "thermal", "powercap", "net", "infiniband")
SKIP_DIRS = {
    "subsystem",
    "device",
    "power",
    "driver",
    "firmware_node",
    "of_node",
    "peers",
    "upper",
    "lower",
    "msi_irqs",
    "queues",
    "batman_adv",
}
KEEP_DEVICE_LINKS = {"hwmon"}  # hwmon names its chip through device/ sometimes
MAX_DEPTH = 4
MAX_FILE = 65536


def copy_tree(src: Path, dst: Path, depth: int, skipped: list[str]) -> None:
    try:
        entries = sorted(os.scandir(src), key=lambda e: e.name)
    except OSError as e:
        skipped.append(f"{src}: {e.strerror}")
        return
    for e in entries:
        s, d = Path(e.path), dst / e.name
        if e.is_symlink():
            target = os.readlink(s)
            if e.name in ("master",) or e.name.startswith(("lower_", "upper_")):
                d.parent.mkdir(parents=True, exist_ok=True)
                os.symlink("../" + Path(target).name, d)
            continue
        if e.is_dir(follow_symlinks=False):
            if e.name not in SKIP_DIRS and depth < MAX_DEPTH:
                copy_tree(s, d, depth + 1, skipped)
        elif e.is_file(follow_symlinks=False):
            try:
                if not os.access(s, os.R_OK) or e.stat().st_mode & 0o444 == 0:
                    skipped.append(f"{s}: not readable")
                    continue
                with open(s, "rb") as f:
                    data = f.read(MAX_FILE)
            except OSError as err:
                skipped.append(f"{s}: {err.strerror}")
                continue
            d.parent.mkdir(parents=True, exist_ok=True)
            d.write_bytes(data)


def main() -> int:
    out = Path(sys.argv[1])
    skipped: list[str] = []
    for cls in CLASSES:
        base = Path("/sys/class") / cls
        if not base.is_dir():
            continue
        for entry in sorted(os.listdir(base)):
            real = (base / entry).resolve()
            copy_tree(real, out / "sys/class" / cls / entry, 0, skipped)
    for rel in ("net/dev",):
        src = Path("/proc") / rel
        if src.exists():
            (out / "proc" / rel).parent.mkdir(parents=True, exist_ok=True)
            (out / "proc" / rel).write_bytes(src.read_bytes())
    (out / "SKIPPED.txt").write_text("\n".join(skipped) + "\n")
    print(f"copied into {out}; {len(skipped)} files skipped (see SKIPPED.txt)")
    return 0


if __name__ == "__main__":
    sys.exit(main())
