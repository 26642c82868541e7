/* userns-exec UID_BASE COUNT DIR... -- PROG ARGS: runs PROG as root of a new user namespace whose ids
 * 0..COUNT-1 are host ids UID_BASE.. (unprivileged on the host), so that a builder needs no privileged pod.
 * The DIRs are handed to that root first (chown). Needs CAP_SETUID, CAP_SETGID and CAP_CHOWN, nothing else.
 * Stays as the parent, forwarding SIGTERM/SIGINT, and exits with the child's status. With USERNS_NPROC=N
 * in the environment, PROG and everything it starts may have at most N processes and threads: the host ids
 * are the builder's own, and root of the new namespace lacks the host's CAP_SYS_RESOURCE to raise it. */
#define _GNU_SOURCE
#include <fcntl.h>
#include <grp.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/wait.h>
#include <unistd.h>

static pid_t child;
static void forward(int sig) { if (child > 0) kill(child, sig); }

static int write_file(const char *path, const char *text) {
  int fd = open(path, O_WRONLY);
  if (fd < 0) return -1;
  ssize_t n = write(fd, text, strlen(text));
  close(fd);
  return n == (ssize_t)strlen(text) ? 0 : -1;
}

int main(int argc, char **argv) {
  int i = 3;
  if (argc < 5) { fprintf(stderr, "usage: userns-exec UID_BASE COUNT DIR... -- PROG ARGS\n"); return 2; }
  const char *base = argv[1], *count = argv[2];
  uid_t owner = (uid_t)strtoul(base, 0, 10);
  for (; i < argc && strcmp(argv[i], "--") != 0; i++)
    if (chown(argv[i], owner, owner) != 0) { perror(argv[i]); return 1; }
  if (i + 1 >= argc) return 2;
  int ready[2], mapped[2];
  if (pipe(ready) || pipe(mapped)) return 1;
  child = fork();
  if (child < 0) return 1;
  if (child == 0) {
    char c;
    const char *nproc = getenv("USERNS_NPROC");
    if (nproc && *nproc) {
      struct rlimit limit = {(rlim_t)strtoul(nproc, 0, 10), (rlim_t)strtoul(nproc, 0, 10)};
      if (limit.rlim_cur == 0 || setrlimit(RLIMIT_NPROC, &limit) != 0) { perror("RLIMIT_NPROC"); _exit(1); }
    }
    if (unshare(CLONE_NEWUSER | CLONE_NEWNS) != 0) { perror("unshare"); _exit(1); }
    if (write(ready[1], "r", 1) != 1 || read(mapped[0], &c, 1) != 1) _exit(1);
    if (setgroups(0, 0) || setresgid(0, 0, 0) || setresuid(0, 0, 0)) { perror("become root"); _exit(1); }
    execv(argv[i + 1], &argv[i + 1]);
    perror("exec");
    _exit(127);
  }
  char c, path[64], map[64];
  if (read(ready[0], &c, 1) != 1) return 1;
  snprintf(map, sizeof map, "0 %s %s\n", base, count);
  snprintf(path, sizeof path, "/proc/%d/uid_map", child);
  if (write_file(path, map)) { perror(path); return 1; }
  snprintf(path, sizeof path, "/proc/%d/gid_map", child);
  if (write_file(path, map)) { perror(path); return 1; }
  if (write(mapped[1], "m", 1) != 1) return 1;
  signal(SIGTERM, forward);
  signal(SIGINT, forward);
  int status;
  while (waitpid(child, &status, 0) < 0) {}
  return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}
