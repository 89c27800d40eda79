/* listen.c — a listening TCP socket for "host:port", with errors that name the address
 * (used by the HTTP front end and the metrics endpoint; libmicrohttpd gets the socket). */
#include "listen.h"

#include <arpa/inet.h>
#include <errno.h>
#include <netdb.h>
#include <netinet/in.h>
#include <stdio.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

#include "core/common.h"

int srv_listen_socket(const char *what, const char *addr, int *fd_out, int *port_out)
{
    char host[256];
    const char *colon = strrchr(addr, ':');
    *fd_out = -1;
    if (!colon || colon == addr || !colon[1] || (size_t)(colon - addr) >= sizeof host)
        return kvs_error(KVS_EINVAL, "%s address '%.200s': expected HOST:PORT", what, addr);
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = 0;
    size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') { /* [::1]:8000 */
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = 0;
    }
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    int gai = getaddrinfo(host, colon + 1, &hints, &res);
    if (gai || !res)
        return kvs_error(KVS_EINVAL, "%s address '%.200s': %s", what, addr, gai_strerror(gai));
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0) {
        int e = errno;
        freeaddrinfo(res);
        return kvs_error(KVS_EIO, "%s: cannot create a socket for %.200s: %s", what, addr,
                         strerror(e));
    }
    int one = 1;
    setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    if (bind(fd, res->ai_addr, res->ai_addrlen) || listen(fd, 128)) {
        int e = errno;
        freeaddrinfo(res);
        close(fd);
        if (e == EADDRINUSE)
            return kvs_error(KVS_EIO, "%s: cannot listen on %.200s: the address is already in "
                             "use (another server on that port?)", what, addr);
        return kvs_error(KVS_EIO, "%s: cannot listen on %.200s: %s", what, addr, strerror(e));
    }
    freeaddrinfo(res);
    struct sockaddr_storage ss;
    socklen_t sl = sizeof ss;
    int port = 0;
    if (!getsockname(fd, (struct sockaddr *)&ss, &sl)) {
        if (ss.ss_family == AF_INET) port = ntohs(((struct sockaddr_in *)&ss)->sin_port);
        else if (ss.ss_family == AF_INET6) port = ntohs(((struct sockaddr_in6 *)&ss)->sin6_port);
    }
    *fd_out = fd;
    if (port_out) *port_out = port;
    return 0;
}

int srv_addr_in_use(const char *addr)
{
    char host[256];
    const char *colon = strrchr(addr, ':');
    if (!colon || colon == addr || !colon[1] || (size_t)(colon - addr) >= sizeof host) return 0;
    memcpy(host, addr, (size_t)(colon - addr));
    host[colon - addr] = 0;
    size_t hl = strlen(host);
    if (hl >= 2 && host[0] == '[' && host[hl - 1] == ']') {
        memmove(host, host + 1, hl - 2);
        host[hl - 2] = 0;
    }
    struct addrinfo hints = {0}, *res = NULL;
    hints.ai_family = AF_UNSPEC;
    hints.ai_socktype = SOCK_STREAM;
    hints.ai_flags = AI_PASSIVE | AI_NUMERICSERV;
    if (getaddrinfo(host, colon + 1, &hints, &res) || !res) return 0;
    int in_use = 0;
    int fd = socket(res->ai_family, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd >= 0) {
        int one = 1;
        setsockopt(fd, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
        in_use = bind(fd, res->ai_addr, res->ai_addrlen) != 0 && errno == EADDRINUSE;
        close(fd);
    }
    freeaddrinfo(res);
    return in_use;
}
