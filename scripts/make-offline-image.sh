#!/bin/sh
# Builds a tiny local sandbox image from Debian's busybox-static, for machines where
# no container registry can provide the default Alpine image.
# Usage: scripts/make-offline-image.sh [IMAGE_NAME]
set -eu
name=${1:-localhost/mcp-sandbox-busybox:latest}
[ -x /bin/busybox ] || { echo "make-offline-image: /bin/busybox is missing; install busybox-static" >&2; exit 1; }
root=$(mktemp -d)
trap 'rm -rf "$root"' EXIT
mkdir -p "$root/bin" "$root/sbin" "$root/usr/bin" "$root/usr/sbin" "$root/etc" "$root/tmp" "$root/run" "$root/root" "$root/home" "$root/var/tmp" "$root/proc" "$root/sys" "$root/dev"
chmod 755 "$root"  # mktemp made it 0700: the sandbox's root directory must be writable by its root
chmod 1777 "$root/tmp" "$root/var/tmp"
cp /bin/busybox "$root/bin/busybox"
for applet in $("$root/bin/busybox" --list); do
  [ "$applet" = busybox ] || ln -s busybox "$root/bin/$applet"
done
printf 'root:x:0:0:root:/root:/bin/sh\nnobody:x:65534:65534:nobody:/:/bin/false\n' > "$root/etc/passwd"
printf 'root:x:0:\nnogroup:x:65534:\n' > "$root/etc/group"
printf 'NAME="MCP sandbox (busybox)"\nID=busybox\n' > "$root/etc/os-release"
tar -C "$root" -c . | podman import --change 'CMD ["/bin/sh"]' --change 'ENV PATH=/usr/local/sbin:/usr/local/bin:/usr/sbin:/usr/bin:/sbin:/bin' - "$name" >/dev/null
echo "$name"
