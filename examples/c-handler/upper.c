/*
 * upper.c - a loopd handler written in C: an echo that upper-cases ASCII.
 *
 * Everything a connection sends comes back with a-z turned into A-Z; all
 * other bytes are echoed unchanged. Built against handler-api/include/loopd.h
 * only; see README.md for building and loading it.
 */
#include <inttypes.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>

#include "loopd.h"

/* Bytes upper-cased and sent per host->send call. */
#define UPPER_CHUNK 4096

/* One per [[handler]] entry that loads this plugin. */
typedef struct upper_instance {
    const loopd_host_api *host;
} upper_instance;

/* Writes a NUL-terminated message into err, truncated to err_cap bytes. */
static void upper_set_error(char *err, size_t err_cap, const char *msg)
{
    size_t n;
    if (err == NULL || err_cap == 0)
        return;
    n = strlen(msg);
    if (n > err_cap - 1)
        n = err_cap - 1;
    memcpy(err, msg, n);
    err[n] = '\0';
}

static void upper_log(const upper_instance *u, loopd_ctx *ctx, uint32_t level,
                      const char *msg)
{
    if (u->host->log != NULL)
        u->host->log(ctx, level, msg, strlen(msg));
}

/* Accepts only an empty JSON object: upper has no settings, and a typo in
 * [handler.config] should not go unnoticed. */
static int upper_config_is_empty(const char *json)
{
    const char *p = json;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    if (*p++ != '{')
        return 0;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    if (*p++ != '}')
        return 0;
    while (*p == ' ' || *p == '\t' || *p == '\n' || *p == '\r')
        p++;
    return *p == '\0';
}

static int32_t upper_create(const loopd_host_api *host, loopd_ctx *ctx,
                            const char *instance_name, const char *config_json,
                            void **instance_out, char *err, size_t err_cap)
{
    upper_instance *u;
    (void)ctx;
    (void)instance_name;
    if (config_json != NULL && !upper_config_is_empty(config_json)) {
        upper_set_error(err, err_cap,
                        "upper takes no configuration; remove [handler.config]");
        return LOOPD_ERR_INVALID;
    }
    u = malloc(sizeof *u);
    if (u == NULL) {
        upper_set_error(err, err_cap, "upper: out of memory");
        return LOOPD_ERR_HANDLER;
    }
    u->host = host;
    *instance_out = u;
    return LOOPD_OK;
}

static void upper_destroy(loopd_ctx *ctx, void *instance)
{
    (void)ctx;
    free(instance);
}

/* Formats a peer address as "1.2.3.4:80", "[0:0:0:0:0:0:0:1]:80", "unix" or
 * "unknown". */
static void upper_format_addr(const loopd_addr *a, char *out, size_t cap)
{
    const uint8_t *ip = a->ip;
    switch (a->family) {
    case LOOPD_AF_INET:
        snprintf(out, cap, "%u.%u.%u.%u:%u", (unsigned)ip[0], (unsigned)ip[1],
                 (unsigned)ip[2], (unsigned)ip[3], (unsigned)a->port);
        break;
    case LOOPD_AF_INET6:
        snprintf(out, cap, "[%x:%x:%x:%x:%x:%x:%x:%x]:%u",
                 (unsigned)(ip[0] << 8 | ip[1]), (unsigned)(ip[2] << 8 | ip[3]),
                 (unsigned)(ip[4] << 8 | ip[5]), (unsigned)(ip[6] << 8 | ip[7]),
                 (unsigned)(ip[8] << 8 | ip[9]),
                 (unsigned)(ip[10] << 8 | ip[11]),
                 (unsigned)(ip[12] << 8 | ip[13]),
                 (unsigned)(ip[14] << 8 | ip[15]), (unsigned)a->port);
        break;
    case LOOPD_AF_UNIX:
        snprintf(out, cap, "unix");
        break;
    default:
        snprintf(out, cap, "unknown");
        break;
    }
}

static int32_t upper_on_open(loopd_ctx *ctx, void *instance, uint64_t conn,
                             const loopd_conn_info *info, void **conn_state)
{
    const upper_instance *u = instance;
    char peer[64];
    char msg[256];
    (void)conn_state; /* no per-connection state */
    upper_format_addr(&info->peer, peer, sizeof peer);
    snprintf(msg, sizeof msg, "upper: connection %" PRIu64 " from %s on %s",
             conn, peer, info->endpoint);
    upper_log(u, ctx, LOOPD_LOG_DEBUG, msg);
    return LOOPD_OK;
}

static int32_t upper_on_data(loopd_ctx *ctx, void *instance, uint64_t conn,
                             void *conn_state, const uint8_t *data, size_t len)
{
    const upper_instance *u = instance;
    uint8_t buf[UPPER_CHUNK];
    size_t done = 0;
    (void)conn_state;

    while (done < len) {
        size_t n = len - done;
        size_t i;
        int32_t rc;
        if (n > sizeof buf)
            n = sizeof buf;
        for (i = 0; i < n; i++) {
            uint8_t c = data[done + i];
            buf[i] = (c >= 'a' && c <= 'z') ? (uint8_t)(c - 'a' + 'A') : c;
        }
        rc = u->host->send(ctx, conn, buf, n);
        if (rc == LOOPD_ERR_AGAIN) {
            /* The peer is not reading fast enough. Rather than drop bytes
             * silently, say so and close once what is queued is sent. */
            char msg[160];
            snprintf(msg, sizeof msg,
                     "upper: connection %" PRIu64 " output queue full, closing "
                     "(%zu bytes not echoed)",
                     conn, len - done);
            upper_log(u, ctx, LOOPD_LOG_WARN, msg);
            u->host->close(ctx, conn, LOOPD_CLOSE_FLUSH);
            return LOOPD_OK;
        }
        if (rc == LOOPD_ERR_CLOSED)
            return LOOPD_OK; /* already closing; on_close follows */
        if (rc != LOOPD_OK)
            return rc; /* unexpected: let loopd close the connection */
        done += n;
    }
    return LOOPD_OK;
}

static const loopd_vtable upper_vtable = {
    .struct_size = (uint32_t)sizeof(loopd_vtable),
    .create = upper_create,
    .destroy = upper_destroy,
    .on_open = upper_on_open,
    .on_data = upper_on_data,
    /* on_eof NULL: close once the echo is flushed. Other hooks: not needed. */
};

static const loopd_plugin_info upper_info = {
    .struct_size = (uint32_t)sizeof(loopd_plugin_info),
    .abi_major = LOOPD_ABI_MAJOR,
    .abi_minor = LOOPD_ABI_MINOR,
    .min_host_minor = 0,
    .name = "upper",
    .version = "0.1.0",
    .default_framing = LOOPD_FRAMING_RAW,
    .vtable = &upper_vtable,
};

LOOPD_EXPORT const loopd_plugin_info *
loopd_plugin_entry_v1(const loopd_host_api *host)
{
    if (host == NULL || host->abi_major != LOOPD_ABI_MAJOR)
        return NULL; /* not a host this plugin was built for */
    return &upper_info;
}
