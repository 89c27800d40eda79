/* reflection.c — server reflection answers from the embedded descriptor set (reflection.h). */
#include "reflection.h"

#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "core/common.h"
#include "google/protobuf/descriptor.pb-c.h"
#include "grpc/reflection/v1/reflection.pb-c.h"

typedef struct refl_file {
    char *name;
    ProtobufCBinaryData bytes;  /* points into r->set */
    int *deps;                  /* indices of imported files */
    int n_deps;
} refl_file;

typedef struct refl_symbol {
    char *name;                 /* full name without a leading dot */
    int file;
    int is_message;
} refl_symbol;

struct srv_reflection {
    Grpc__Reflection__V1__FileDescriptorResponse *set; /* the set split into files */
    refl_file *files;
    int n_files;
    refl_symbol *sym;
    int n_sym, cap_sym;
    char **services;
    int n_services;
};

static int add_symbol(srv_reflection *r, const char *prefix, const char *name, int file,
                      int is_message, char **full)
{
    if (!name) return 0;
    if (r->n_sym == r->cap_sym) {
        int cap = r->cap_sym ? 2 * r->cap_sym : 64;
        refl_symbol *ns = realloc(r->sym, (size_t)cap * sizeof *ns);
        if (!ns) return KVS_ENOMEM;
        r->sym = ns;
        r->cap_sym = cap;
    }
    size_t n = strlen(prefix) + strlen(name) + 2;
    char *s = malloc(n);
    if (!s) return KVS_ENOMEM;
    snprintf(s, n, "%s%s%s", prefix, *prefix ? "." : "", name);
    r->sym[r->n_sym++] = (refl_symbol){s, file, is_message};
    if (full) *full = s;
    return 0;
}

static int add_message(srv_reflection *r, const char *prefix,
                       const Google__Protobuf__DescriptorProto *m, int file)
{
    char *full = NULL;
    if (add_symbol(r, prefix, m->name, file, 1, &full)) return KVS_ENOMEM;
    if (!full) return 0;
    for (size_t i = 0; i < m->n_nested_type; i++)
        if (add_message(r, full, m->nested_type[i], file)) return KVS_ENOMEM;
    for (size_t i = 0; i < m->n_enum_type; i++)
        if (add_symbol(r, full, m->enum_type[i]->name, file, 0, NULL)) return KVS_ENOMEM;
    return 0;
}

static int index_file(srv_reflection *r, int fi, const Google__Protobuf__FileDescriptorProto *fd)
{
    const char *pkg = fd->package ? fd->package : "";
    for (size_t i = 0; i < fd->n_message_type; i++)
        if (add_message(r, pkg, fd->message_type[i], fi)) return KVS_ENOMEM;
    for (size_t i = 0; i < fd->n_enum_type; i++)
        if (add_symbol(r, pkg, fd->enum_type[i]->name, fi, 0, NULL)) return KVS_ENOMEM;
    for (size_t i = 0; i < fd->n_service; i++) {
        char *svc = NULL;
        if (add_symbol(r, pkg, fd->service[i]->name, fi, 0, &svc)) return KVS_ENOMEM;
        if (!svc) continue;
        char **ns = realloc(r->services, (size_t)(r->n_services + 1) * sizeof *ns);
        if (!ns) return KVS_ENOMEM;
        r->services = ns;
        r->services[r->n_services++] = svc;
        for (size_t k = 0; k < fd->service[i]->n_method; k++)
            if (add_symbol(r, svc, fd->service[i]->method[k]->name, fi, 0, NULL))
                return KVS_ENOMEM;
    }
    return 0;
}

static int find_file(const srv_reflection *r, const char *name)
{
    for (int i = 0; i < r->n_files; i++)
        if (r->files[i].name && !strcmp(r->files[i].name, name)) return i;
    return -1;
}

int srv_reflection_create(const uint8_t *set, size_t len, srv_reflection **out)
{
    srv_reflection *r = calloc(1, sizeof *r);
    if (!r) return kvs_error(KVS_ENOMEM, "out of memory");
    /* A FileDescriptorSet (repeated FileDescriptorProto file = 1) has the wire format of a
     * FileDescriptorResponse (repeated bytes file_descriptor_proto = 1): this splits it. */
    r->set = grpc__reflection__v1__file_descriptor_response__unpack(NULL, len, set);
    if (!r->set || r->set->n_file_descriptor_proto == 0) {
        srv_reflection_destroy(r);
        return kvs_error(KVS_EFORMAT, "reflection: malformed descriptor set");
    }
    r->n_files = (int)r->set->n_file_descriptor_proto;
    r->files = calloc((size_t)r->n_files, sizeof *r->files);
    Google__Protobuf__FileDescriptorProto **fds = calloc((size_t)r->n_files, sizeof *fds);
    int rc = (!r->files || !fds) ? KVS_ENOMEM : 0;
    for (int i = 0; !rc && i < r->n_files; i++) {
        ProtobufCBinaryData b = r->set->file_descriptor_proto[i];
        fds[i] = google__protobuf__file_descriptor_proto__unpack(NULL, b.len, b.data);
        if (!fds[i] || !fds[i]->name) {
            rc = KVS_EFORMAT;
            break;
        }
        r->files[i].bytes = b;
        r->files[i].name = strdup(fds[i]->name);
        if (!r->files[i].name) rc = KVS_ENOMEM;
        else rc = index_file(r, i, fds[i]);
    }
    for (int i = 0; !rc && i < r->n_files; i++) {
        r->files[i].deps = calloc(fds[i]->n_dependency + 1, sizeof(int));
        if (!r->files[i].deps) {
            rc = KVS_ENOMEM;
            break;
        }
        for (size_t k = 0; k < fds[i]->n_dependency; k++) {
            int d = find_file(r, fds[i]->dependency[k]);
            if (d >= 0) r->files[i].deps[r->files[i].n_deps++] = d;
        }
    }
    if (fds)
        for (int i = 0; i < r->n_files; i++)
            if (fds[i]) google__protobuf__file_descriptor_proto__free_unpacked(fds[i], NULL);
    free(fds);
    if (rc) {
        srv_reflection_destroy(r);
        return kvs_error(rc, "reflection: cannot index the descriptor set");
    }
    *out = r;
    return 0;
}

void srv_reflection_destroy(srv_reflection *r)
{
    if (!r) return;
    for (int i = 0; i < r->n_sym; i++) free(r->sym[i].name);
    free(r->sym);
    free(r->services); /* names are owned by sym */
    if (r->files)
        for (int i = 0; i < r->n_files; i++) {
            free(r->files[i].name);
            free(r->files[i].deps);
        }
    free(r->files);
    if (r->set) grpc__reflection__v1__file_descriptor_response__free_unpacked(r->set, NULL);
    free(r);
}

int srv_reflection_n_services(const srv_reflection *r) { return r->n_services; }
const char *srv_reflection_service(const srv_reflection *r, int i) { return r->services[i]; }

/* The file and everything it imports, transitively, the file first. */
static void collect(const srv_reflection *r, int f, char *seen, ProtobufCBinaryData *out,
                    size_t *n)
{
    if (seen[f]) return;
    seen[f] = 1;
    out[(*n)++] = r->files[f].bytes;
    for (int i = 0; i < r->files[f].n_deps; i++) collect(r, r->files[f].deps[i], seen, out, n);
}

int srv_reflection_answer(const srv_reflection *r, const uint8_t *req, size_t req_len,
                          uint8_t **out, size_t *out_len)
{
    Grpc__Reflection__V1__ServerReflectionRequest *q =
        grpc__reflection__v1__server_reflection_request__unpack(NULL, req_len, req);
    if (!q) return kvs_error(KVS_EINVAL, "malformed ServerReflectionRequest");
    Grpc__Reflection__V1__ServerReflectionResponse resp =
        GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__INIT;
    Grpc__Reflection__V1__FileDescriptorResponse fdr =
        GRPC__REFLECTION__V1__FILE_DESCRIPTOR_RESPONSE__INIT;
    Grpc__Reflection__V1__ListServiceResponse lsr = GRPC__REFLECTION__V1__LIST_SERVICE_RESPONSE__INIT;
    Grpc__Reflection__V1__ExtensionNumberResponse enr =
        GRPC__REFLECTION__V1__EXTENSION_NUMBER_RESPONSE__INIT;
    Grpc__Reflection__V1__ErrorResponse er = GRPC__REFLECTION__V1__ERROR_RESPONSE__INIT;
    Grpc__Reflection__V1__ServiceResponse *svc = NULL, **svcp = NULL;
    ProtobufCBinaryData *files = calloc((size_t)r->n_files + 1, sizeof *files);
    char *seen = calloc((size_t)r->n_files + 1, 1);
    char errmsg[320];
    int rc = 0;
    if (!files || !seen) {
        rc = kvs_error(KVS_ENOMEM, "out of memory");
        goto done;
    }
    resp.valid_host = q->host;
    resp.original_request = q;
    int f = -1;
    const char *what = NULL;
    switch (q->message_request_case) {
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_LIST_SERVICES:
        svc = calloc((size_t)r->n_services + 1, sizeof *svc);
        svcp = calloc((size_t)r->n_services + 1, sizeof *svcp);
        if (!svc || !svcp) {
            rc = kvs_error(KVS_ENOMEM, "out of memory");
            goto done;
        }
        for (int i = 0; i < r->n_services; i++) {
            grpc__reflection__v1__service_response__init(&svc[i]);
            svc[i].name = r->services[i];
            svcp[i] = &svc[i];
        }
        lsr.n_service = (size_t)r->n_services;
        lsr.service = svcp;
        resp.message_response_case =
            GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_LIST_SERVICES_RESPONSE;
        resp.list_services_response = &lsr;
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_BY_FILENAME:
        what = q->file_by_filename;
        f = find_file(r, what);
        break;
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_SYMBOL: {
        what = q->file_containing_symbol;
        const char *s = what[0] == '.' ? what + 1 : what;
        for (int i = 0; i < r->n_sym; i++)
            if (!strcmp(r->sym[i].name, s)) {
                f = r->sym[i].file;
                break;
            }
        break;
    }
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_ALL_EXTENSION_NUMBERS_OF_TYPE: {
        const char *s = q->all_extension_numbers_of_type;
        if (s[0] == '.') s++;
        int known = 0;
        for (int i = 0; i < r->n_sym; i++)
            if (r->sym[i].is_message && !strcmp(r->sym[i].name, s)) known = 1;
        if (known) {
            enr.base_type_name = (char *)s;
            resp.message_response_case =
                GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ALL_EXTENSION_NUMBERS_RESPONSE;
            resp.all_extension_numbers_response = &enr;
        } else {
            snprintf(errmsg, sizeof errmsg, "unknown message type '%.200s'", s);
            er.error_code = 5; /* NOT_FOUND */
            er.error_message = errmsg;
            resp.message_response_case =
                GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
            resp.error_response = &er;
        }
        break;
    }
    case GRPC__REFLECTION__V1__SERVER_REFLECTION_REQUEST__MESSAGE_REQUEST_FILE_CONTAINING_EXTENSION:
        snprintf(errmsg, sizeof errmsg, "this server defines no extensions");
        er.error_code = 5;
        er.error_message = errmsg;
        resp.message_response_case =
            GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
        resp.error_response = &er;
        break;
    default:
        snprintf(errmsg, sizeof errmsg, "empty or unknown reflection request");
        er.error_code = 3; /* INVALID_ARGUMENT */
        er.error_message = errmsg;
        resp.message_response_case =
            GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
        resp.error_response = &er;
        break;
    }
    if (what) {
        if (f >= 0) {
            size_t n = 0;
            collect(r, f, seen, files, &n);
            fdr.n_file_descriptor_proto = n;
            fdr.file_descriptor_proto = files;
            resp.message_response_case =
                GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_FILE_DESCRIPTOR_RESPONSE;
            resp.file_descriptor_response = &fdr;
        } else {
            snprintf(errmsg, sizeof errmsg, "'%.200s' not found", what);
            er.error_code = 5;
            er.error_message = errmsg;
            resp.message_response_case =
                GRPC__REFLECTION__V1__SERVER_REFLECTION_RESPONSE__MESSAGE_RESPONSE_ERROR_RESPONSE;
            resp.error_response = &er;
        }
    }
    size_t n = grpc__reflection__v1__server_reflection_response__get_packed_size(&resp);
    *out = malloc(n ? n : 1);
    if (!*out) {
        rc = kvs_error(KVS_ENOMEM, "out of memory");
        goto done;
    }
    *out_len = grpc__reflection__v1__server_reflection_response__pack(&resp, *out);
done:
    free(svc);
    free(svcp);
    free(files);
    free(seen);
    grpc__reflection__v1__server_reflection_request__free_unpacked(q, NULL);
    return rc;
}
