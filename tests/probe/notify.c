/*
 * notify: an sd_notify(3) client for the readiness tests. Sends its
 * arguments, joined by newlines, as one datagram to $NOTIFY_SOCKET (a
 * path, or an abstract address written with a leading '@'). Exits 0 when
 * the datagram was sent, 1 otherwise. Built with `gcc -static` by the
 * tests and copied into the zone template.
 *
 *   notify READY=1 STATUS=serving
 */
#include <stddef.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/un.h>

int main(int argc, char **argv)
{
    const char *path = getenv("NOTIFY_SOCKET");
    if (!path || !*path) {
        fprintf(stderr, "notify: NOTIFY_SOCKET is not set\n");
        return 1;
    }
    struct sockaddr_un addr = { .sun_family = AF_UNIX };
    size_t len = strlen(path);
    if (len >= sizeof(addr.sun_path)) {
        fprintf(stderr, "notify: NOTIFY_SOCKET is too long\n");
        return 1;
    }
    memcpy(addr.sun_path, path, len);
    if (path[0] == '@')
        addr.sun_path[0] = '\0';
    char msg[4096] = "";
    for (int i = 1; i < argc; i++) {
        if (i > 1)
            strncat(msg, "\n", sizeof(msg) - strlen(msg) - 1);
        strncat(msg, argv[i], sizeof(msg) - strlen(msg) - 1);
    }
    int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        perror("notify: socket");
        return 1;
    }
    socklen_t alen = offsetof(struct sockaddr_un, sun_path) + len;
    if (sendto(fd, msg, strlen(msg), 0, (struct sockaddr *)&addr, alen) < 0) {
        perror("notify: sendto");
        return 1;
    }
    return 0;
}
