/*
 * probe: makes the raw system calls a hostile root inside a zone would try,
 * and prints one `name=RESULT` line each (RESULT is OK or the errno name).
 * Built by the tier-2 tests with `gcc -static` and copied into the zone
 * template; busybox cannot make arbitrary syscalls.
 *
 * Nothing here is destructive even if a protection were missing: files are
 * opened for writing but never written, clone3 gets invalid arguments, the
 * clock is "set" with NULL (a no-op), and reboot from inside a PID
 * namespace could only end the zone itself.
 *
 *   probe syscalls           the host-management calls seccomp refuses
 *   probe open PATH r|w      open(2) a path, without writing
 *   probe connect IP PORT    TCP connect
 *   probe ids                uid/euid, then try setuid(0)
 *   probe ptrace PID         PTRACE_ATTACH
 *   probe kill PID           kill(PID, 0)
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <sched.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/ioctl.h>
#include <sys/mount.h>
#include <sys/ptrace.h>
#include <sys/reboot.h>
#include <sys/socket.h>
#include <sys/syscall.h>
#include <termios.h>
#include <unistd.h>

static const char *errname(int e)
{
	switch (e) {
	case EPERM: return "EPERM";
	case ENOENT: return "ENOENT";
	case ESRCH: return "ESRCH";
	case EBADF: return "EBADF";
	case EACCES: return "EACCES";
	case EFAULT: return "EFAULT";
	case EINVAL: return "EINVAL";
	case ENOTTY: return "ENOTTY";
	case ETXTBSY: return "ETXTBSY";
	case EROFS: return "EROFS";
	case ENOSYS: return "ENOSYS";
	case EAFNOSUPPORT: return "EAFNOSUPPORT";
	case ENETUNREACH: return "ENETUNREACH";
	case ECONNREFUSED: return "ECONNREFUSED";
	case ENXIO: return "ENXIO";
	case ENODEV: return "ENODEV";
	}
	static char buf[32];
	snprintf(buf, sizeof buf, "E%d", e);
	return buf;
}

static void report(const char *name, long ret)
{
	printf("%s=%s\n", name, ret < 0 ? errname(errno) : "OK");
	fflush(stdout);
}

static int syscalls(void)
{
	char c = 'x';
	long key_spec_session = -3;

	report("keyctl", syscall(SYS_keyctl, 0 /* GET_KEYRING_ID */, key_spec_session, 0));
	report("add_key", syscall(SYS_add_key, "user", "zonit-probe", "x", 1, key_spec_session));
	report("finit_module", syscall(SYS_finit_module, -1, "", 0));
	report("init_module", syscall(SYS_init_module, NULL, 0, ""));
	report("delete_module", syscall(SYS_delete_module, "zonit_probe", 0));
	report("kexec_load", syscall(SYS_kexec_load, 0, 0, NULL, 0));
	report("unshare_user", unshare(CLONE_NEWUSER));
	report("unshare_net", unshare(CLONE_NEWNET));
	report("unshare_files", unshare(CLONE_FILES));
	report("setns", setns(-1, 0));
	report("clone3", syscall(SYS_clone3, NULL, 0));
	report("tiocsti", ioctl(0, TIOCSTI, &c));
	report("tiocsti_high", syscall(SYS_ioctl, 0, 0x100000000UL | TIOCSTI, &c));
	report("tioclinux", ioctl(0, TIOCLINUX, &c));
	report("socket_vsock", socket(40 /* AF_VSOCK */, SOCK_STREAM, 0));
	report("socket_unix", socket(AF_UNIX, SOCK_STREAM, 0));
	report("bpf", syscall(SYS_bpf, 0, NULL, 0));
	report("perf_event_open", syscall(SYS_perf_event_open, NULL, 0, -1, -1, 0));
	report("io_uring_setup", syscall(SYS_io_uring_setup, 1, NULL));
	report("userfaultfd", syscall(SYS_userfaultfd, 0));
	report("open_by_handle_at", syscall(SYS_open_by_handle_at, AT_FDCWD, NULL, 0));
	report("mount", mount("none", "/tmp", "tmpfs", 0, NULL));
	report("umount", umount2("/proc", MNT_DETACH));
	report("swapon", syscall(SYS_swapon, "/nonexistent", 0));
	report("settimeofday", syscall(SYS_settimeofday, NULL, NULL));
	report("reboot", reboot(RB_POWER_OFF));
	report("getpid", getpid());
	return 0;
}

int main(int argc, char **argv)
{
	if (argc >= 2 && !strcmp(argv[1], "syscalls"))
		return syscalls();
	if (argc == 4 && !strcmp(argv[1], "open")) {
		int flags = argv[3][0] == 'w' ? O_WRONLY : O_RDONLY;
		report("open", open(argv[2], flags | O_CLOEXEC));
		return 0;
	}
	if (argc == 4 && !strcmp(argv[1], "connect")) {
		struct sockaddr_in sa = { .sin_family = AF_INET };
		int fd = socket(AF_INET, SOCK_STREAM, 0);
		sa.sin_port = htons(atoi(argv[3]));
		inet_pton(AF_INET, argv[2], &sa.sin_addr);
		report("connect", connect(fd, (struct sockaddr *)&sa, sizeof sa));
		return 0;
	}
	if (argc == 2 && !strcmp(argv[1], "ids")) {
		printf("uid=%d euid=%d\n", getuid(), geteuid());
		report("setuid0", setuid(0));
		printf("after uid=%d euid=%d\n", getuid(), geteuid());
		return 0;
	}
	if (argc == 3 && !strcmp(argv[1], "ptrace")) {
		report("ptrace", ptrace(PTRACE_ATTACH, atoi(argv[2]), NULL, NULL));
		return 0;
	}
	if (argc == 3 && !strcmp(argv[1], "kill")) {
		report("kill", kill(atoi(argv[2]), 0));
		return 0;
	}
	fprintf(stderr, "usage: probe syscalls|open PATH r|w|connect IP PORT|ids|ptrace PID|kill PID\n");
	return 2;
}
