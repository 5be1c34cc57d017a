/*
 * Times one cheap system call, for the cost of a seccomp filter
 * (BENCHMARKS.md, "The seccomp filter at run time").
 *
 *   syscall-loop           plain
 *   syscall-loop allow     under a one-instruction allow-all filter
 *
 * Prints nanoseconds per getppid() over 2,000,000 calls, three passes.
 * Build static (gcc -O2 -static) to run it as a zone's command too.
 */
#define _GNU_SOURCE
#include <linux/filter.h>
#include <linux/seccomp.h>
#include <stdio.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/syscall.h>
#include <time.h>
#include <unistd.h>

int main(int argc, char **argv)
{
	if (argc > 1 && strcmp(argv[1], "allow") == 0) {
		struct sock_filter f[] = {BPF_STMT(BPF_RET | BPF_K, SECCOMP_RET_ALLOW)};
		struct sock_fprog prog = {1, f};
		if (prctl(PR_SET_NO_NEW_PRIVS, 1, 0, 0, 0) ||
		    syscall(SYS_seccomp, SECCOMP_SET_MODE_FILTER, 0, &prog)) {
			perror("syscall-loop: seccomp");
			return 1;
		}
	}
	const long n = 2000000;
	for (int pass = 0; pass < 3; pass++) {
		struct timespec a, b;
		clock_gettime(CLOCK_MONOTONIC, &a);
		for (long i = 0; i < n; i++)
			syscall(SYS_getppid);
		clock_gettime(CLOCK_MONOTONIC, &b);
		printf("%.1f ns/call\n", ((b.tv_sec - a.tv_sec) * 1e9 + (b.tv_nsec - a.tv_nsec)) / n);
	}
	return 0;
}
