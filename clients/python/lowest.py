"""Prints the lowest versions the client's dependencies allow, as pip pins.

`make client-lowest` installs them in a fresh virtualenv and runs the smoke
test there. The generated code checks at import that the grpcio and protobuf
it runs on are at least the versions it was generated for, so a lower bound
in pyproject.toml that is too low fails that run.

    python lowest.py path/to/pyproject.toml
"""

import re
import sys
import tomllib

with open(sys.argv[1], "rb") as file:
    dependencies = tomllib.load(file)["project"]["dependencies"]
pins = []
for dependency in dependencies:
    match = re.fullmatch(r"([A-Za-z0-9_.-]+)\s*>=\s*([0-9][0-9.]*)(,.*)?", dependency.replace(" ", ""))
    if not match:
        sys.exit(f"{dependency!r} has no lower bound")
    pins.append(f"{match.group(1)}=={match.group(2)}")
print(" ".join(pins))
