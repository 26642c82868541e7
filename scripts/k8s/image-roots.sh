#!/usr/bin/env bash
# Makes the build contexts (a rootfs folder and a Dockerfile FROM scratch each) of the images the cluster and
# the Kubernetes builder backend run, from binaries on this host only:
#   WORK/pause      the pod sandbox process, a tiny static C program
#   WORK/busybox    Debian's busybox-static
#   WORK/buildkitd  stock buildkitd + buildctl (BUILDKIT_BIN), Debian's runc with the libraries it links, busybox
#   image-roots.sh WORK BUILDKIT_BIN
# An operator builds WORK/buildkitd with opendepot itself and pushes it to opendepot's registry (README:
# Kubernetes).
set -euo pipefail
work=$1 buildkit_bin=$2
mkdir -p "$work"/pause/rootfs "$work"/busybox/rootfs/{bin,tmp,etc} \
  "$work"/buildkitd/rootfs/{usr/bin,bin,lib/x86_64-linux-gnu,lib64,tmp,etc,var/lib/buildkit,run/buildkit,certs}

cat >"$work/pause/pause.c" <<'EOF'
/* The pod sandbox: holds the pod's namespaces, reaps zombies, exits on SIGINT/SIGTERM. */
#include <signal.h>
#include <sys/wait.h>
#include <unistd.h>
static void quit(int sig) { (void)sig; _exit(0); }
static void reap(int sig) { (void)sig; while (waitpid(-1, 0, WNOHANG) > 0) {} }
int main(void) {
  struct sigaction on_quit = {0}, on_child = {0};
  on_quit.sa_handler = quit;
  sigaction(SIGINT, &on_quit, 0);
  sigaction(SIGTERM, &on_quit, 0);
  on_child.sa_handler = reap;
  on_child.sa_flags = SA_NOCLDSTOP;
  sigaction(SIGCHLD, &on_child, 0);
  for (;;) pause();
}
EOF
gcc -Os -static -o "$work/pause/rootfs/pause" "$work/pause/pause.c"
strip "$work/pause/rootfs/pause"
printf 'FROM scratch\nCOPY rootfs/ /\nUSER 65535:65535\nENTRYPOINT ["/pause"]\n' >"$work/pause/Dockerfile"

applets="sh ls cat mkdir echo sleep df du id wc ps mount"
cp /bin/busybox "$work/busybox/rootfs/bin/"
for applet in $applets; do ln -sf busybox "$work/busybox/rootfs/bin/$applet"; done
chmod 1777 "$work/busybox/rootfs/tmp"
echo 'root:x:0:0:root:/root:/bin/sh' >"$work/busybox/rootfs/etc/passwd"
printf 'FROM scratch\nCOPY rootfs/ /\nENV PATH=/bin\nCMD ["/bin/sh"]\n' >"$work/busybox/Dockerfile"

root=$work/buildkitd/rootfs
cp "$buildkit_bin/buildkitd" "$buildkit_bin/buildctl" "$root/usr/bin/"
strip "$root/usr/bin/buildkitd" "$root/usr/bin/buildctl"
cp /usr/sbin/runc "$root/usr/bin/runc"
# Runs buildkitd as root of its own user namespace (unprivileged ids on the host): builder pods need no
# privileged mode (builders/kubernetes.py).
gcc -Os -static -Wall -o "$root/usr/bin/userns-exec" "$(dirname "$0")/userns-exec.c"
strip "$root/usr/bin/userns-exec"
for library in $(ldd /usr/sbin/runc | grep -oE '/lib[^ ]+'); do
  case "$library" in
    /lib64/*) cp -L "$library" "$root/lib64/" ;;
    *) cp -L "$library" "$root/lib/x86_64-linux-gnu/" ;;
  esac
done
cp /bin/busybox "$root/bin/"
for applet in $applets; do ln -sf busybox "$root/bin/$applet"; done
chmod 1777 "$root/tmp"
echo 'root:x:0:0:root:/root:/bin/sh' >"$root/etc/passwd"
echo 'root:x:0:' >"$root/etc/group"
cat >"$work/buildkitd/Dockerfile" <<'EOF'
FROM scratch
COPY rootfs/ /
ENV PATH=/usr/bin:/bin
VOLUME /var/lib/buildkit
ENTRYPOINT ["/usr/bin/buildkitd"]
EOF
