/* free_port(): a TCP port that was free on the loopback interface a moment ago (the kernel's pick), for the store of a
 * forked multi-process job; 29500 when the kernel cannot be asked. Shared by the C checks that fork TCP jobs
 * (multiprocess_check.c, fault_check.c, split_check.c, p2p_check.c). */
#pragma once
#include <arpa/inet.h>
#include <netinet/in.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static int free_port(void) {
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (fd < 0) return 29500;
    struct sockaddr_in a;
    memset(&a, 0, sizeof a);
    a.sin_family = AF_INET;
    a.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    socklen_t len = sizeof a;
    const int ok = bind(fd, (struct sockaddr*)&a, sizeof a) == 0 && getsockname(fd, (struct sockaddr*)&a, &len) == 0;
    close(fd);
    return ok ? ntohs(a.sin_port) : 29500;
}
