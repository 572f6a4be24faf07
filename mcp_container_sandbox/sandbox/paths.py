"""Where the server keeps its things inside every sandbox, in one place.

STATE_DIR is a small tmpfs (fast to write; creating a file on the overlay costs ~0.4 ms of the
sandbox's half CPU) holding the helpers and the commands' records; DATA_DIR is a mount of the
server's own (on the sandbox's disk, or an anonymous volume), for what is large or must outlive
a restart of the container itself: command output, file links, a pooled sandbox's claim. It is
never the image's own tree, which may be read-only to the sandbox's root.

agent/sandbox-agent.c repeats these paths as #defines, and the shell library in runtime/command_records.py
spells them out; tests/unit checks that both agree with this module.
"""

STATE_DIR = "/run/mcp-sandbox"
DATA_DIR = "/var/lib/mcp-sandbox"
COMMANDS_DIR = f"{STATE_DIR}/commands"
OUTPUT_DIR = f"{DATA_DIR}/output"
LINKS_DIR = f"{DATA_DIR}/links"
CLAIM_PATH = f"{DATA_DIR}/claim"
HELPERS_COPY = f"{DATA_DIR}/.helpers"  # the helpers, written on the host before a sandbox with a disk starts
ENV_PATH = f"{DATA_DIR}/env"  # NAME=value lines every command gets (the egress proxy, secrets' placeholders)
CA_PATH = f"{DATA_DIR}/proxy-ca.crt"  # the egress proxy's CA, in a sandbox with secrets
CA_BUNDLE_PATH = f"{DATA_DIR}/ca-bundle.crt"  # the host's trust store and that CA
AGENT_PATH = f"{STATE_DIR}/agent"
LIB_PATH = f"{STATE_DIR}/lib-7.sh"  # a new name whenever the library changes: old sandboxes get it anew
STATE_TMPFS = f"{STATE_DIR}:rw,exec,nosuid,nodev,size=64m,mode=0755"
# The main process of a sandbox with a disk: it puts the helpers where commands find them (the
# tmpfs is empty at every start of the container) and then only waits. Should the copy fail or
# come late, the server installs them through podman exec, as for a sandbox without a disk.
MAIN_WITH_HELPERS = f"cp -p {HELPERS_COPY}/* {STATE_DIR}/ 2>/dev/null; exec sleep 2147483647"
