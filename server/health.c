/* health.c — grpc.health.v1.Health: Check and Watch. The server is SERVING until shutdown
 * begins, then NOT_SERVING. Known service names: "" (the whole server) and
 * "kvsieve.v1.Kvsieve". Check on an unknown name: NOT_FOUND; Watch on one: SERVICE_UNKNOWN,
 * and the stream stays open (as the health protocol says). At shutdown every open Watch gets
 * NOT_SERVING and then the status UNAVAILABLE, so it does not hold the shutdown up. */
#include <stdlib.h>
#include <string.h>

#include "grpc/health/v1/health.pb-c.h"
#include "srv_internal.h"

static int known_service(const char *name)
{
    return !strcmp(name, "") || !strcmp(name, "kvsieve.v1.Kvsieve");
}

static void status_init(Grpc__Health__V1__HealthCheckResponse *r, int known, int serving)
{
    grpc__health__v1__health_check_response__init(r);
    r->status = !known    ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVICE_UNKNOWN
                : serving ? GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__SERVING
                          : GRPC__HEALTH__V1__HEALTH_CHECK_RESPONSE__SERVING_STATUS__NOT_SERVING;
}

static grpc_byte_buffer *status_msg(int known, int serving)
{
    Grpc__Health__V1__HealthCheckResponse r;
    status_init(&r, known, serving);
    return srv_pack(&r.base);
}

void srv_health_check(srv_call *c)
{
    Grpc__Health__V1__HealthCheckRequest *q = (Grpc__Health__V1__HealthCheckRequest *)srv_unpack_call(
        c, &grpc__health__v1__health_check_request__descriptor, "HealthCheckRequest");
    if (!q) return;
    if (!known_service(q->service)) {
        srv_call_fail(c, GRPC_STATUS_NOT_FOUND, "unknown service '%.200s'", q->service);
    } else {
        Grpc__Health__V1__HealthCheckResponse r;
        status_init(&r, 1, !atomic_load(&c->s->shutting_down));
        srv_call_reply(c, &r.base, GRPC_STATUS_OK, NULL);
    }
    grpc__health__v1__health_check_request__free_unpacked(q, NULL);
}

static void watch_cancel(srv_call *c)
{
    srv *s = c->s;
    int found = 0;
    pthread_mutex_lock(&s->watch_mu);
    for (srv_call **p = &s->watchers; *p; p = &(*p)->watch_next)
        if (*p == c) {
            *p = c->watch_next;
            found = 1;
            break;
        }
    pthread_mutex_unlock(&s->watch_mu);
    if (found) srv_call_unref(c); /* the list's reference */
}

void srv_health_watch(srv_call *c)
{
    srv *s = c->s;
    Grpc__Health__V1__HealthCheckRequest *q = (Grpc__Health__V1__HealthCheckRequest *)srv_unpack_call(
        c, &grpc__health__v1__health_check_request__descriptor, "HealthCheckRequest");
    if (!q) return;
    c->watch_known = known_service(q->service);
    grpc__health__v1__health_check_request__free_unpacked(q, NULL);
    c->on_cancel = watch_cancel;
    pthread_mutex_lock(&s->watch_mu);
    int shutting = atomic_load(&s->shutting_down);
    if (!shutting) {
        srv_call_ref(c);
        c->watch_next = s->watchers;
        s->watchers = c;
    }
    pthread_mutex_lock(&c->mu);
    srv_call_push_locked(c, status_msg(c->watch_known, !shutting));
    if (shutting) srv_call_close_locked(c, GRPC_STATUS_UNAVAILABLE, "server shutting down");
    pthread_mutex_unlock(&c->mu);
    pthread_mutex_unlock(&s->watch_mu);
    /* A cancel that came before we joined the list has already run watch_cancel (finding
     * nothing); take ourselves out again. */
    if (!shutting && atomic_load(&c->gone)) watch_cancel(c);
}

void srv_health_shutdown(srv *s)
{
    pthread_mutex_lock(&s->watch_mu);
    srv_call *list = s->watchers;
    s->watchers = NULL;
    pthread_mutex_unlock(&s->watch_mu);
    while (list) {
        srv_call *c = list, *next = c->watch_next;
        pthread_mutex_lock(&c->mu);
        if (c->watch_known) srv_call_push_locked(c, status_msg(1, 0));
        srv_call_close_locked(c, GRPC_STATUS_UNAVAILABLE, "server shutting down");
        pthread_mutex_unlock(&c->mu);
        srv_call_unref(c);
        list = next;
    }
}
