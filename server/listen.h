/* listen.h — bind + listen on "host:port" (port 0 = any free port) for the HTTP listeners. */
#ifndef KVS_SRV_LISTEN_H
#define KVS_SRV_LISTEN_H

/* what names the listener in messages ("http", "metrics"). On success *fd_out is a listening
 * socket and *port_out the bound port; errors return a negative status with a one-line
 * message naming the address ("address 127.0.0.1:8000 is already in use"). */
int srv_listen_socket(const char *what, const char *addr, int *fd_out, int *port_out);

/* 1 if binding "host:port" fails because the address is in use (a probe for listeners that
 * report it badly, gRPC's); 0 otherwise, including addresses it cannot parse. */
int srv_addr_in_use(const char *addr);

#endif
