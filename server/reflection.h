/* reflection.h — gRPC server reflection (grpc.reflection.v1 and v1alpha: same messages, same
 * field numbers) over the FileDescriptorSet embedded at build time (every .proto the server
 * serves, with its imports). Answers list_services, file_by_filename, file_containing_symbol
 * (packages' messages, nested messages, enums, services, methods) and
 * all_extension_numbers_of_type (always empty: no extensions); anything else gets an
 * error_response NOT_FOUND. The grpc plumbing is in grpc_server.c. */
#ifndef KVS_SRV_REFLECTION_H
#define KVS_SRV_REFLECTION_H

#include <stddef.h>
#include <stdint.h>

typedef struct srv_reflection srv_reflection;

/* set: a serialized google.protobuf.FileDescriptorSet (copied). */
int srv_reflection_create(const uint8_t *set, size_t len, srv_reflection **out);
void srv_reflection_destroy(srv_reflection *r);

/* One ServerReflectionRequest in, one packed ServerReflectionResponse out (malloc'd, caller
 * frees). KVS_EINVAL if the request bytes are malformed. */
int srv_reflection_answer(const srv_reflection *r, const uint8_t *req, size_t req_len,
                          uint8_t **out, size_t *out_len);

/* Number of services and their full names (for tests and logs). */
int srv_reflection_n_services(const srv_reflection *r);
const char *srv_reflection_service(const srv_reflection *r, int i);

/* The embedded set (gen/kvsieve_descriptors.c). */
extern const unsigned char kvs_descriptor_set[];
extern const size_t kvs_descriptor_set_len;

#endif
