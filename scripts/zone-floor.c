/*
 * The floor for starting many zones at once: the least a zone start can
 * do, for scripts/bench.sh to compare zonit with.
 *
 *   zone-floor N ROOT CMD [ARG...]
 *
 * Clones N children at once, each into new PID, mount, UTS, IPC and
 * network namespaces. Each makes its mounts private, binds ROOT onto
 * itself, pivot_roots into it, detaches the old root, mounts /proc and
 * executes CMD. No cgroup, no /dev, no /sys, no masks, no capability or
 * seccomp set-up, no supervisor.
 *
 * Prints "all N running after X ms" once every child has executed CMD
 * (each holds the write end of one close-on-exec pipe: EOF means all of
 * them executed or died), the time counted from the first clone; then
 * kills and reaps the children. Exits 1 if a child failed.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/mount.h>
#include <sys/syscall.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static const char *root;
static char **cmd;
static int wr; /* write end of the exec pipe */

static void die(const char *what)
{
	/* One write, so parallel children do not interleave. */
	char buf[256];
	int n = snprintf(buf, sizeof buf, "zone-floor: %s: %s\n", what, strerror(errno));
	if (write(2, buf, n) < 0) {
	}
	char fail = 1;
	if (write(wr, &fail, 1) < 0) {
	}
	_exit(127);
}

static int child(void *arg)
{
	(void)arg;
	if (mount(NULL, "/", NULL, MS_REC | MS_PRIVATE, NULL))
		die("private /");
	if (mount(root, root, NULL, MS_BIND | MS_REC, NULL))
		die("bind root");
	if (chdir(root))
		die("chdir root");
	if (syscall(SYS_pivot_root, ".", "."))
		die("pivot_root");
	if (umount2(".", MNT_DETACH))
		die("detach old root");
	if (chdir("/"))
		die("chdir /");
	if (mount("proc", "/proc", "proc", MS_NOSUID | MS_NODEV | MS_NOEXEC, NULL))
		die("mount /proc");
	execv(cmd[0], cmd);
	die("exec");
	return 127;
}

static double now_ms(void)
{
	struct timespec t;
	clock_gettime(CLOCK_MONOTONIC, &t);
	return t.tv_sec * 1e3 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv)
{
	if (argc < 4) {
		fprintf(stderr, "usage: zone-floor N ROOT CMD [ARG...]\n");
		return 2;
	}
	int n = atoi(argv[1]);
	root = argv[2];
	cmd = argv + 3;
	pid_t *pids = calloc(n, sizeof *pids);
	size_t stack_size = 64 * 1024;
	char *stacks = malloc(stack_size * n);
	int p[2];
	if (!pids || !stacks || pipe2(p, O_CLOEXEC)) {
		perror("zone-floor: set-up");
		return 1;
	}
	wr = p[1];
	int flags = CLONE_NEWPID | CLONE_NEWNS | CLONE_NEWUTS | CLONE_NEWIPC | CLONE_NEWNET | SIGCHLD;
	double t0 = now_ms();
	for (int i = 0; i < n; i++) {
		pids[i] = clone(child, stacks + stack_size * (i + 1), flags, NULL);
		if (pids[i] < 0) {
			perror("zone-floor: clone");
			return 1;
		}
	}
	close(p[1]);
	char c;
	ssize_t got;
	int failed = 0;
	while ((got = read(p[0], &c, 1)) != 0) {
		if (got > 0)
			failed = 1;
		else if (errno != EINTR)
			break;
	}
	double t1 = now_ms();
	printf("all %d running after %.1f ms%s\n", n, t1 - t0, failed ? " (some failed)" : "");
	fflush(stdout);
	for (int i = 0; i < n; i++)
		kill(pids[i], SIGKILL);
	for (int i = 0; i < n; i++)
		waitpid(pids[i], NULL, 0);
	return failed;
}
