"""The stop floor's client (see bench/floor_spawner.py): the least a control
command is — an interpreter, a Unix socket, one line each way. Nothing but
``socket`` is imported, so that the floor is a floor: stemctl also loads
argparse and json, and supervisorctl much more."""

import socket
import sys

sock = socket.socket(socket.AF_UNIX, socket.SOCK_STREAM)
sock.connect(sys.argv[1])
sock.sendall(b"stop\n")
sys.exit(0 if sock.recv(64).startswith(b"stopped") else 1)
