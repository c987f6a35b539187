/*
 * loopd.h - the loopd handler ABI, version 1.5.
 *
 * This header is the single source of truth for the contract between the
 * loopd runtime ("the host") and a handler plugin ("the handler"). The Rust
 * mirror lives in handler-api/src/abi.rs and a test checks that every size
 * and offset agrees with this file.
 *
 * Name families:
 *   loopd_*            types and constants
 *   loopd_vtable.on_*  hooks the handler implements (NULL = not interested)
 *   loopd_host_api.*   functions the host implements
 *
 * Rules that hold for everything below:
 *   - A plugin exports exactly one symbol, loopd_plugin_entry_v1. The major
 *     version is part of its name; a library built for another major simply
 *     has no such symbol and is refused before any of its code runs.
 *   - Every extensible struct starts with `uint32_t struct_size`. Fields are
 *     only ever appended within a major version. A reader uses
 *     min(struct_size, sizeof(what it knows)); fields it cannot see are
 *     treated as NULL/0. A struct smaller than its v1.0 size (the
 *     LOOPD_*_V1_0_SIZE constants below, for 64-bit targets) is refused.
 *   - `reserved` fields must be written as 0 and are ignored by readers.
 *   - No allocation changes sides. Bytes passed into a hook are borrowed for
 *     the duration of that call only. Bytes passed to a host function are
 *     copied (or written to the socket) before it returns. Handler instances
 *     and per-connection state are opaque pointers the handler allocates and
 *     frees.
 *   - Status codes are plain int32_t: 0 is success, negative is an error
 *     (LOOPD_ERR_*). No enums cross the boundary (their size is
 *     implementation-defined); constants are macros.
 *   - Ids (connections, sockets, timers) are uint64_t: the upper 32 bits are
 *     a generation, the lower 32 bits a slot. 0 is never a valid id. Every
 *     host function checks the id; a stale id gets LOOPD_ERR_NO_SUCH_CONN
 *     (or LOOPD_ERR_NO_SUCH_TIMER), never the new occupant of the slot.
 *   - No re-entrancy: a host function never runs a hook. Events it causes
 *     (a close, a write error) are delivered after the current hook returns.
 *   - Threading: hooks run on the loop thread, one at a time. Host functions
 *     may only be called from the loop thread while a hook of the same
 *     runtime is running; anywhere else they return LOOPD_ERR_WRONG_THREAD.
 *     Four exceptions: log and log_to (any thread, while the instance
 *     exists), post (any thread, while the instance exists), now_ms and
 *     status_str (any time).
 *   - Hook results: for create, on_open and on_data, 0 or positive is
 *     success and negative is failure. on_eof: anything other than
 *     LOOPD_EOF_KEEP_OPEN means LOOPD_EOF_CLOSE.
 *   - The host never unloads (dlclose) a plugin: static data, including the
 *     plugin info and vtable, may live in the library for the whole process.
 *
 * The header is C99 and compiles cleanly with
 *   gcc -std=c99 -Wall -Wextra -Werror -pedantic
 */
#ifndef LOOPD_H
#define LOOPD_H

#include <stddef.h>
#include <stdint.h>

#ifdef __cplusplus
extern "C" {
#endif

/* ------------------------------------------------------------------------ */
/* Versions                                                                  */
/* ------------------------------------------------------------------------ */

/* A major bump breaks the ABI; the entry symbol's name changes with it. */
#define LOOPD_ABI_MAJOR 1
/* A minor bump only appends fields, hooks and host functions.
 * 1.1 added: loopd_host_api.log_to, loopd_vtable.on_listen,
 *            loopd_vtable.on_oversize, loopd_vtable.on_partial,
 *            loopd_listen_info, LOOPD_TRANSPORT_UDP, LOOPD_OVERSIZE_*.
 * 1.2 added: loopd_host_api.send_file.
 * 1.3 added: loopd_host_api.pause_read, resume_read, shutdown_write,
 *            connect_with, post, watch_fd, watch_modify, watch_remove,
 *            timer_repeat; loopd_vtable.on_message, loopd_vtable.on_fd;
 *            loopd_connect_options, LOOPD_FD_*, LOOPD_ERR_NO_SUCH_INSTANCE,
 *            LOOPD_ERR_FULL, LOOPD_REASON_IDLE, LOOPD_REASON_LIMIT.
 * 1.4 added: loopd_host_api.post_siblings, worker_info;
 *            loopd_connect_options.flags, LOOPD_CONNECT_KEEP_READING,
 *            LOOPD_TRANSPORT_TLS; loopd_host_api.stats_json,
 *            metric_declare, metric_series, metric_update; LOOPD_METRIC_*;
 *            loopd_host_api.peer_subject, peer_certificate;
 *            loopd_connect_options.server_name; loopd_plugin_info.alpn;
 *            loopd_datagram, loopd_host_api.send_datagrams,
 *            loopd_vtable.on_datagrams.
 * 1.5 added: loopd_plugin_info.framings, LOOPD_FRAMING_BIT.
 * 1.6 added: LOOPD_CLOSE_RESET. */
#define LOOPD_ABI_MINOR 6

/* Sizes of the v1.0 structs on 64-bit targets: the smallest struct_size a
 * reader accepts. They never change; later minors only append (a 1.1 host
 * reads a 1.0 plugin's vtable as if on_listen were NULL). */
#define LOOPD_VTABLE_V1_0_SIZE 88
#define LOOPD_PLUGIN_INFO_V1_0_SIZE 48
#define LOOPD_HOST_API_V1_0_SIZE 112
#define LOOPD_CONN_INFO_V1_0_SIZE 72

/* The one symbol a plugin exports. */
#define LOOPD_ENTRY_SYMBOL "loopd_plugin_entry_v1"

#if defined(__GNUC__) || defined(__clang__)
#define LOOPD_EXPORT __attribute__((visibility("default")))
#else
#define LOOPD_EXPORT
#endif

/* ------------------------------------------------------------------------ */
/* Status codes (int32_t)                                                    */
/* ------------------------------------------------------------------------ */

#define LOOPD_OK 0
/* The connection's output queue is at its high watermark; nothing was
 * queued. Wait for on_writable, then send again. */
#define LOOPD_ERR_AGAIN (-1)
/* The id does not name a live connection or socket of this handler
 * instance (never existed, already closed and released, or stale). */
#define LOOPD_ERR_NO_SUCH_CONN (-2)
/* The connection is closing (close was called, the peer went away, or
 * loopd is shutting down); it accepts no more output. on_close follows. */
#define LOOPD_ERR_CLOSED (-3)
/* An argument is invalid (NULL pointer, unknown mode, malformed URL...). */
#define LOOPD_ERR_INVALID (-4)
/* The operation is not available (e.g. a stream operation on a datagram
 * socket, or a feature this host does not have). */
#define LOOPD_ERR_UNSUPPORTED (-5)
/* A configured limit was reached (max_connections, timers...). */
#define LOOPD_ERR_LIMIT (-6)
/* The operating system refused the operation (see the host's log). */
#define LOOPD_ERR_IO (-7)
/* A host function was called outside a hook or from another thread. */
#define LOOPD_ERR_WRONG_THREAD (-8)
/* The timer id does not name a pending timer of this instance. */
#define LOOPD_ERR_NO_SUCH_TIMER (-9)
/* Returned by a hook (e.g. by the Rust SDK) when the handler panicked or
 * failed; the host closes the connection or fails the instance. Any other
 * negative value returned by a hook means the same thing. */
#define LOOPD_ERR_HANDLER (-10)
/* post: no handler instance of this runtime has that name (1.3). */
#define LOOPD_ERR_NO_SUCH_INSTANCE (-11)
/* post: the target's mailbox is full (its message or byte limit); nothing
 * was posted. Back-pressure: try again later, or drop (1.3). */
#define LOOPD_ERR_FULL (-12)

/* Handler-defined metrics (1.4): metric_declare's kind, metric_update's op. */
#define LOOPD_METRIC_COUNTER 1
#define LOOPD_METRIC_GAUGE 2
#define LOOPD_METRIC_HISTOGRAM 3
#define LOOPD_METRIC_ADD 1     /* counter (value >= 0) or gauge */
#define LOOPD_METRIC_SET 2     /* gauge */
#define LOOPD_METRIC_OBSERVE 3 /* histogram */
#define LOOPD_METRIC_MAX_LABELS 8

/* ------------------------------------------------------------------------ */
/* Other constants                                                           */
/* ------------------------------------------------------------------------ */

/* Address families (loopd_addr.family). */
#define LOOPD_AF_UNSPEC 0
#define LOOPD_AF_INET 1
#define LOOPD_AF_INET6 2
#define LOOPD_AF_UNIX 3

/* Transports (loopd_conn_info.transport, loopd_listen_info.transport). */
#define LOOPD_TRANSPORT_TCP 1
#define LOOPD_TRANSPORT_UNIX 2
#define LOOPD_TRANSPORT_UDP 3 /* listeners only (1.1) */
#define LOOPD_TRANSPORT_TLS 4 /* TLS over TCP, plaintext to the handler (1.4) */

/* How a connection came to be (loopd_conn_info.origin). */
#define LOOPD_ORIGIN_ACCEPTED 1
#define LOOPD_ORIGIN_CONNECTED 2

/* Framing (loopd_conn_info.framing, loopd_plugin_info.default_framing).
 * RAW: on_data gets bytes as they arrive, at most max_frame per call.
 * LINE: on_data gets one line without its "\n" and without a "\r" before it.
 * LENGTH_PREFIXED: on_data gets one payload; on the wire each payload is
 *   preceded by its length as a 4-byte big-endian unsigned integer. */
#define LOOPD_FRAMING_DEFAULT 0 /* plugin info only: no preference (raw) */
#define LOOPD_FRAMING_RAW 1
#define LOOPD_FRAMING_LINE 2
#define LOOPD_FRAMING_LENGTH_PREFIXED 3
/* A framing's bit in loopd_plugin_info.framings (1.5), e.g.
 * LOOPD_FRAMING_BIT(LOOPD_FRAMING_LINE). For RAW, LINE and LENGTH_PREFIXED
 * only: DEFAULT is no framing (its bit means nothing), and values of 32 or
 * more have no bit. */
#define LOOPD_FRAMING_BIT(framing) (1u << (framing))

/* close() modes. */
#define LOOPD_CLOSE_FLUSH 0 /* stop reading, send what is queued, then close */
#define LOOPD_CLOSE_ABORT 1 /* drop the queue and close now */
#define LOOPD_CLOSE_RESET 2 /* 1.6: as ABORT, and the peer sees a reset (TCP RST), not an EOF */

/* on_close reasons. */
#define LOOPD_REASON_PEER 1           /* the peer closed (EOF), we flushed */
#define LOOPD_REASON_LOCAL 2          /* the handler called close() */
#define LOOPD_REASON_ERROR 3          /* I/O error or reset by the peer */
#define LOOPD_REASON_FRAME_TOO_BIG 4  /* the peer exceeded max_frame */
#define LOOPD_REASON_HANDLER 5        /* a hook failed or panicked */
#define LOOPD_REASON_SHUTDOWN 6       /* loopd shut down */
#define LOOPD_REASON_CONNECT_FAILED 7 /* an outbound connect() failed */
#define LOOPD_REASON_TIMEOUT 8        /* a flush before close timed out */
#define LOOPD_REASON_IDLE 9           /* no traffic for idle_timeout_ms (1.3) */
#define LOOPD_REASON_LIMIT 10         /* over a loopd limit, e.g. the
                                         process's max_buffered_input (1.3) */

/* on_eof return values. */
#define LOOPD_EOF_CLOSE 0     /* close once the output queue is flushed */
#define LOOPD_EOF_KEEP_OPEN 1 /* keep writing; the handler closes later */

/* on_oversize return values (1.1). */
#define LOOPD_OVERSIZE_CLOSE 0 /* close the connection (also a NULL hook) */
#define LOOPD_OVERSIZE_SKIP 1  /* discard that frame, keep the connection */

/* fd watches (1.3): the interest passed to watch_fd/watch_modify, and the
 * events passed to on_fd. HUP (hung up or in error) is an event only; it is
 * reported whatever the interest. */
#define LOOPD_FD_READABLE 1u
#define LOOPD_FD_WRITABLE 2u
#define LOOPD_FD_HUP 4u

/* Log levels for loopd_host_api.log. */
#define LOOPD_LOG_ERROR 1
#define LOOPD_LOG_WARN 2
#define LOOPD_LOG_INFO 3
#define LOOPD_LOG_DEBUG 4
#define LOOPD_LOG_TRACE 5

/* ------------------------------------------------------------------------ */
/* Types                                                                     */
/* ------------------------------------------------------------------------ */

/* The host's per-instance context. Opaque; valid from create() until
 * destroy() returns. Pass it back to every host function. */
typedef struct loopd_ctx loopd_ctx;

/* A borrowed byte range (used by sendv). ptr may be NULL when len is 0. */
typedef struct loopd_bytes {
    const uint8_t *ptr;
    size_t len;
} loopd_bytes;

/* A socket address, without any pointer inside.
 * LOOPD_AF_INET:  ip[0..4] holds the IPv4 address, port is in host order.
 * LOOPD_AF_INET6: ip[0..16] holds the IPv6 address, port in host order,
 *                 scope_id the interface index (0 if none).
 * LOOPD_AF_UNIX:  no address fields are used (peers are usually unnamed).
 * LOOPD_AF_UNSPEC: unknown. */
typedef struct loopd_addr {
    uint16_t family;
    uint16_t port;
    uint32_t scope_id;
    uint8_t ip[16];
} loopd_addr;

/* One datagram of a batch (1.4): what on_datagrams receives (addr is the
 * sender, status 0) and what send_datagrams sends (addr is where to; loopd
 * writes status). A fixed layout, never extended: it is an array element.
 * data may be NULL when len is 0. */
typedef struct loopd_datagram {
    loopd_addr addr;
    int32_t status;    /* send_datagrams: LOOPD_OK or why it was not sent */
    uint32_t reserved; /* 0 */
    const uint8_t *data;
    size_t len;
} loopd_datagram;

/* Facts about a new connection, passed to on_open. Extensible. The struct
 * and everything it points to are borrowed for the duration of the call. */
typedef struct loopd_conn_info {
    uint32_t struct_size;
    uint32_t transport; /* LOOPD_TRANSPORT_* */
    uint32_t origin;    /* LOOPD_ORIGIN_* */
    uint32_t framing;   /* LOOPD_FRAMING_* in effect for this connection */
    loopd_addr peer;
    loopd_addr local;
    /* The listener's URL (accepted) or the connect() target (connected),
     * NUL-terminated UTF-8, e.g. "tcp://127.0.0.1:7000". Never NULL. */
    const char *endpoint;
} loopd_conn_info;

/* A listener (stream) or datagram socket of the instance, passed to
 * on_listen (1.1). Extensible. Borrowed for the duration of the call. */
typedef struct loopd_listen_info {
    uint32_t struct_size;
    uint32_t transport; /* LOOPD_TRANSPORT_* */
    loopd_addr local;   /* the bound address (AF_UNIX for unix sockets) */
    /* The URL actually bound (a port of 0 replaced by the real one),
     * NUL-terminated UTF-8. Never NULL. */
    const char *url;
} loopd_listen_info;

/* Options for an outbound connection (connect_with, 1.3). Extensible: set
 * struct_size to sizeof(loopd_connect_options). A zero field means "what
 * the instance has" (its framing, max_frame and watermarks, which is also
 * what plain connect() gives an outbound connection). Borrowed for the
 * call. */
typedef struct loopd_connect_options {
    uint32_t struct_size;
    uint32_t framing;               /* LOOPD_FRAMING_*; DEFAULT = inherit */
    uint64_t max_frame;             /* 0 = the instance's max_frame */
    uint64_t output_high_watermark; /* 0 = the instance's */
    uint64_t output_low_watermark;  /* 0 = the instance's; below high */
    /* --- 1.4 --- */
    uint32_t flags;                 /* LOOPD_CONNECT_*; 0 = none */
    uint32_t reserved;              /* 0 */
    /* tls:// only: the DNS name the server's certificate must carry, also
     * sent as SNI (NUL-terminated, borrowed for the call). NULL = the
     * certificate must carry the URL's IP address. Read only by a host
     * whose loopd_host_api has peer_certificate (check struct_size): an
     * earlier 1.4 host ignores it and verifies the IP. */
    const char *server_name;
} loopd_connect_options;

/* connect_with flags (1.4). KEEP_READING: loopd keeps reading this
 * connection while its own output queue is at its high watermark (send
 * still refuses with LOOPD_ERR_AGAIN there, and on_writable follows once
 * the queue is below the low watermark). Without it a connection whose
 * queue is full is not read until it drains, which is right for a server
 * answering its client, and wrong for a proxy's upstream: a full queue
 * toward the upstream must not stop its replies being read. A host older
 * than 1.4 ignores flags: a plugin that needs one sets min_host_minor 4. */
#define LOOPD_CONNECT_KEEP_READING 1u

/* Functions the host implements. The table is static in the host and valid
 * for the life of the process. Extensible: check struct_size (or
 * abi_minor) before using a function added after 1.0. */
typedef struct loopd_host_api {
    uint32_t struct_size;
    uint32_t abi_major; /* LOOPD_ABI_MAJOR of the host */
    uint32_t abi_minor; /* LOOPD_ABI_MINOR of the host */
    uint32_t reserved;  /* 0 */
    /* loopd's version, e.g. "0.1.0", NUL-terminated, static. */
    const char *version;

    /* Log a message (msg need not be NUL-terminated) through loopd's logger,
     * tagged with the instance name. level is LOOPD_LOG_*. Never fails. */
    void (*log)(loopd_ctx *ctx, uint32_t level, const char *msg, size_t len);

    /* Queue bytes for a connection. Tries the socket first; only what the
     * kernel does not take is copied into the connection's output queue.
     * All or nothing: LOOPD_OK (everything accepted), LOOPD_ERR_AGAIN (the
     * queue is at its high watermark; nothing accepted; on_writable follows
     * once it drains below the low watermark), LOOPD_ERR_CLOSED,
     * LOOPD_ERR_NO_SUCH_CONN, LOOPD_ERR_INVALID (data NULL with len > 0). */
    int32_t (*send)(loopd_ctx *ctx, uint64_t conn, const uint8_t *data,
                    size_t len);

    /* Like send, for `count` parts sent back to back as one message (all
     * parts or none). parts may be NULL when count is 0. */
    int32_t (*sendv)(loopd_ctx *ctx, uint64_t conn, const loopd_bytes *parts,
                     size_t count);

    /* Close a connection. mode is LOOPD_CLOSE_FLUSH, LOOPD_CLOSE_ABORT or
     * (1.6) LOOPD_CLOSE_RESET; a 1.5 host refuses RESET with
     * LOOPD_ERR_INVALID.
     * No more on_data follows; on_close(LOOPD_REASON_LOCAL) is delivered
     * after the current hook returns (FLUSH: once the queue is sent, or the
     * flush times out). Closing a closing connection is LOOPD_OK. */
    int32_t (*close)(loopd_ctx *ctx, uint64_t conn, uint32_t mode);

    /* Send one datagram from a datagram socket of this instance to `to`.
     * Never queued: LOOPD_OK, LOOPD_ERR_AGAIN (the kernel's buffer is full;
     * the datagram was dropped), LOOPD_ERR_IO, LOOPD_ERR_NO_SUCH_CONN,
     * LOOPD_ERR_UNSUPPORTED (socket is a stream), LOOPD_ERR_INVALID. */
    int32_t (*send_datagram)(loopd_ctx *ctx, uint64_t socket,
                             const loopd_addr *to, const uint8_t *data,
                             size_t len);

    /* Arm a one-shot timer: on_timer(timer, user_data) runs after at least
     * delay_ms milliseconds. *timer_out receives its id. */
    int32_t (*timer_set)(loopd_ctx *ctx, uint64_t delay_ms, uint64_t user_data,
                         uint64_t *timer_out);

    /* Cancel a pending timer: LOOPD_OK, or LOOPD_ERR_NO_SUCH_TIMER if it
     * already fired, was cancelled, or is not this instance's. */
    int32_t (*timer_cancel)(loopd_ctx *ctx, uint64_t timer);

    /* Start an outbound stream connection to a numeric URL
     * ("tcp://127.0.0.1:6379", "tcp://[::1]:80", "unix:///run/x.sock").
     * *conn_out receives the id at once. The result arrives later as
     * on_open (connected) or on_close(LOOPD_REASON_CONNECT_FAILED). Bytes
     * sent before on_open are queued. LOOPD_ERR_INVALID for a malformed
     * URL, LOOPD_ERR_LIMIT at max_connections, LOOPD_ERR_UNSUPPORTED for a
     * handler with no connection hook at all (on_open, on_data, on_eof,
     * on_writable, on_close, on_partial, on_oversize all NULL; 1.5): nothing
     * would hear of the connection. */
    int32_t (*connect)(loopd_ctx *ctx, const char *url, uint64_t *conn_out);

    /* Milliseconds on a monotonic clock (since the host started). */
    uint64_t (*now_ms)(loopd_ctx *ctx);

    /* Bytes waiting in a connection's output queue. */
    int32_t (*output_queued)(loopd_ctx *ctx, uint64_t conn, size_t *bytes_out);

    /* A static, NUL-terminated description of a status code. */
    const char *(*status_str)(int32_t status);

    /* --- 1.1 --- */

    /* Like log, under an explicit log target (NUL-terminated, e.g.
     * "loopd::access"; NULL means the instance's own target). Any thread,
     * while the instance exists. */
    void (*log_to)(loopd_ctx *ctx, uint32_t level, const char *target,
                   const char *msg, size_t len);

    /* --- 1.2 --- */

    /* Write up to `len` bytes of the file `fd`, from `offset`, to a
     * connection with sendfile(2): the kernel copies them from the page
     * cache, and loopd keeps none of them in memory (a slow reader costs
     * nothing). Never queued. fd is borrowed for the call only.
     * LOOPD_OK: *sent_out bytes were written (at least 1 when len > 0; 0
     * for len 0); when fewer than `len`, on_writable follows once the socket
     * can take more.
     * LOOPD_ERR_AGAIN: nothing written, because the socket is full, output
     * sent before is still queued (it goes first), or an outbound connection
     * is still connecting (on_open comes first); on_writable follows.
     * LOOPD_ERR_IO: reading the file failed, or it ends at or before `offset`;
     * nothing was written and the connection is left as it was.
     * LOOPD_ERR_CLOSED (closing, or the write failed and the connection is
     * now closing), LOOPD_ERR_NO_SUCH_CONN, LOOPD_ERR_INVALID (sent_out
     * NULL). sent_out may not be NULL. */
    int32_t (*send_file)(loopd_ctx *ctx, uint64_t conn, int32_t fd,
                         uint64_t offset, uint64_t len, uint64_t *sent_out);

    /* --- 1.3 --- */

    /* Flow control: stop reading a connection. No on_data (or on_eof)
     * follows until resume_read; bytes already read stay buffered, and the
     * peer is slowed down by TCP once the kernel's buffer fills. Use it to
     * stop a fast side while another connection is slow (a proxy pauses the
     * client while the upstream's queue is at its high watermark).
     * Independent of loopd's own pause at the high watermark: reading
     * resumes only when neither holds. Pausing twice is LOOPD_OK.
     * LOOPD_ERR_NO_SUCH_CONN; LOOPD_ERR_CLOSED when closing. */
    int32_t (*pause_read)(loopd_ctx *ctx, uint64_t conn);

    /* Read a connection paused with pause_read again: buffered frames are
     * delivered after the current hook returns. LOOPD_OK when not paused. */
    int32_t (*resume_read)(loopd_ctx *ctx, uint64_t conn);

    /* Half-close: once the output queue is flushed, shut down the sending
     * side (shutdown(SHUT_WR)): the peer reads EOF, and this connection keeps
     * reading. Later sends return LOOPD_ERR_CLOSED; close() still closes.
     * LOOPD_OK (also when already shut), LOOPD_ERR_NO_SUCH_CONN,
     * LOOPD_ERR_CLOSED (closing). */
    int32_t (*shutdown_write)(loopd_ctx *ctx, uint64_t conn);

    /* connect() with options for this connection (opts may be NULL: the
     * same as connect()). LOOPD_ERR_INVALID for a malformed URL or options
     * (a low watermark not below the high one, max_frame over 1 GiB). */
    int32_t (*connect_with)(loopd_ctx *ctx, const char *url,
                            const loopd_connect_options *opts,
                            uint64_t *conn_out);

    /* Post a message to the handler instance named `instance`
     * (NUL-terminated; NULL means this instance) of this runtime. The bytes
     * are copied; on_message(msg) runs on the target's loop thread after
     * the current hook returns (never inside this call), in the order
     * posted. Any thread, while this instance exists. LOOPD_OK,
     * LOOPD_ERR_FULL (the target's mailbox is at its limit; nothing was
     * posted), LOOPD_ERR_NO_SUCH_INSTANCE, LOOPD_ERR_INVALID (msg NULL with
     * len > 0, or a message larger than the mailbox), LOOPD_ERR_CLOSED (the
     * runtime has stopped). */
    int32_t (*post)(loopd_ctx *ctx, const char *instance, const uint8_t *msg,
                    size_t len);

    /* Watch a descriptor the handler owns (a pipe, an eventfd, inotify, a
     * database client's socket) for LOOPD_FD_READABLE and/or
     * LOOPD_FD_WRITABLE; on_fd(watch, user_data, events) runs when it is
     * ready. *watch_out receives the watch id (generation-tagged like a
     * connection id). The fd stays the handler's: loopd never reads,
     * writes or closes it. Remove the watch BEFORE closing the fd (a fd
     * closed under a watch is detected and the watch dropped, never spun
     * on). After an on_fd with LOOPD_FD_HUP the watch is parked until
     * watch_modify or watch_remove. LOOPD_ERR_INVALID (a negative fd, an
     * unknown interest bit), LOOPD_ERR_IO (the poller refused it, e.g. a
     * regular file or an fd watched already). */
    int32_t (*watch_fd)(loopd_ctx *ctx, int32_t fd, uint32_t interest,
                        uint64_t user_data, uint64_t *watch_out);

    /* Change a watch's interest (0 parks it). LOOPD_ERR_NO_SUCH_CONN for a
     * stale or foreign watch id. */
    int32_t (*watch_modify)(loopd_ctx *ctx, uint64_t watch, uint32_t interest);

    /* Stop watching; the id is stale afterwards. LOOPD_ERR_NO_SUCH_CONN for
     * a stale or foreign watch id. */
    int32_t (*watch_remove)(loopd_ctx *ctx, uint64_t watch);

    /* Arm a repeating timer: on_timer(timer, user_data) after delay_ms, then
     * every interval_ms (interval_ms >= 1), drift-free: each deadline is
     * the previous one plus the interval, not the time on_timer ran; ticks
     * missed while the loop was busy are skipped, not bunched. The id stays
     * the same until timer_cancel. LOOPD_ERR_INVALID for interval_ms 0. */
    int32_t (*timer_repeat)(loopd_ctx *ctx, uint64_t delay_ms,
                            uint64_t interval_ms, uint64_t user_data,
                            uint64_t *timer_out);

    /* --- 1.4 --- */

    /* Post a message to this instance's siblings: the instance of the same
     * name on every other worker of this process ([runtime] workers). Each
     * gets a copy through on_message, as with post. *delivered_out (may be
     * NULL) receives how many took it. LOOPD_OK when every sibling took it
     * (also when there are none: a single worker), LOOPD_ERR_FULL when at
     * least one sibling's mailbox was at its limit (it got nothing; the
     * others did), LOOPD_ERR_INVALID (msg NULL with len > 0). Any thread,
     * while this instance exists. */
    int32_t (*post_siblings)(loopd_ctx *ctx, const uint8_t *msg, size_t len,
                             uint32_t *delivered_out);

    /* This runtime's worker index (0-based) and the number of workers: 0
     * and 1 for a process with one loop. Either pointer may be NULL. Any
     * thread. */
    int32_t (*worker_info)(loopd_ctx *ctx, uint32_t *index_out,
                           uint32_t *count_out);

    /* A snapshot of the whole process's counters as JSON text (UTF-8, no
     * NUL): every worker's, summed ("total") and one by one
     * ("per_worker"); docs/handlers/status.md lists the fields. Each
     * worker refreshes its part at most every 100 ms while it is busy.
     * *len_out receives the length of the text. LOOPD_OK when it fit in
     * buf (cap bytes; buf may be NULL when cap is 0) and was copied;
     * LOOPD_ERR_FULL when it did not (nothing copied: call again with
     * *len_out bytes); LOOPD_ERR_INVALID (len_out NULL, or buf NULL with
     * cap > 0). Any thread, while this instance exists. */
    int32_t (*stats_json)(loopd_ctx *ctx, uint8_t *buf, size_t cap,
                          size_t *len_out);

    /* Declare a metric of this instance: kind LOOPD_METRIC_*, a Prometheus
     * name ([a-zA-Z_:][a-zA-Z0-9_:]*, unique in the instance), a one-line
     * help text, up to LOOPD_METRIC_MAX_LABELS label names
     * ([a-zA-Z_][a-zA-Z0-9_]*; not handler, worker, le or __*) and, for a
     * histogram only, bucket_count strictly increasing finite upper bounds
     * (0: 0.005 to 10, Prometheus' defaults; at most 32). Strings are
     * NUL-terminated and borrowed for the call. *metric_out receives the
     * metric's id. Only inside create: LOOPD_ERR_INVALID otherwise, and for
     * a bad declaration (loopd logs why, naming the handler and metric).
     * The metrics appear in stats_json and the status handler's /metrics,
     * labelled with the handler's name. */
    int32_t (*metric_declare)(loopd_ctx *ctx, uint32_t kind, const char *name,
                              const char *help, const char *const *label_names,
                              uint32_t label_count, const double *buckets,
                              uint32_t bucket_count, uint64_t *metric_out);

    /* The series of a metric with these label values (as many as it has
     * label names, NUL-terminated UTF-8 of at most 256 bytes, borrowed for
     * the call), made on first use: *series_out receives its id, the same
     * for the same values. Resolve a series once and keep the id.
     * LOOPD_ERR_INVALID (unknown metric, wrong count, bad value),
     * LOOPD_ERR_LIMIT (16384 series per instance). Inside any hook. */
    int32_t (*metric_series)(loopd_ctx *ctx, uint64_t metric,
                             const char *const *label_values, uint32_t count,
                             uint64_t *series_out);

    /* Update a series: op LOOPD_METRIC_ADD (a counter by value >= 0, a
     * gauge by any value), LOOPD_METRIC_SET (a gauge), LOOPD_METRIC_OBSERVE
     * (a histogram). No allocation, no syscall. LOOPD_ERR_INVALID for an
     * unknown series, an op its metric does not take, NaN, or a negative
     * counter step. Inside any hook. */
    int32_t (*metric_update)(loopd_ctx *ctx, uint64_t series, uint32_t op,
                             double value);

    /* The subject of the peer's certificate on a TLS connection, as an
     * RFC 4514 string (UTF-8, no NUL; e.g. "CN=alice,O=Example"): the
     * client's under mutual TLS (tls_client_ca), the server's on an
     * outbound tls:// connection. Buffer as stats_json: LOOPD_OK when it
     * fit in buf (cap bytes) and was copied, LOOPD_ERR_FULL when it did
     * not (call again with *len_out bytes). LOOPD_ERR_NO_SUCH_CONN,
     * LOOPD_ERR_UNSUPPORTED when the connection has no verified peer
     * certificate (not TLS, the handshake not done, no client certificate
     * asked for), LOOPD_ERR_IO when it has one whose subject loopd cannot
     * parse (peer_certificate still gives it), LOOPD_ERR_INVALID (len_out
     * NULL, or buf NULL with cap > 0). Loop thread. The subject is in
     * RFC 4514 order, the reverse of the certificate's own: a certificate
     * whose subject is C=GB, O=Example, CN=alice reads
     * "CN=alice,O=Example,C=GB". To authorise by it, compare the whole
     * string or, better, the certificate (peer_certificate). */
    int32_t (*peer_subject)(loopd_ctx *ctx, uint64_t conn, uint8_t *buf,
                            size_t cap, size_t *len_out);

    /* The peer's certificate itself (DER, the leaf), for a handler that
     * pins or parses it. As peer_subject. */
    int32_t (*peer_certificate)(loopd_ctx *ctx, uint64_t conn, uint8_t *buf,
                                size_t cap, size_t *len_out);

    /* send_datagram for count datagrams at once, in order, from one
     * datagram socket of this instance: as few system calls as the
     * platform allows (sendmmsg(2) on Linux, one sendto each elsewhere).
     * On Linux, consecutive datagrams to one address, all of one size (the
     * last of such a run may be shorter), leave as one UDP GSO send (the
     * kernel cuts it into the same datagrams; the receiver sees no
     * difference). Never queued. Each msgs[i].status is set as
     * send_datagram would return it: LOOPD_OK, LOOPD_ERR_AGAIN (the kernel's
     * buffer was full: that datagram and every valid one after it were
     * dropped, untried), LOOPD_ERR_IO (that one failed, with the rest of its
     * GSO run if it had one; the rest were still tried), LOOPD_ERR_INVALID
     * (a bad address, or data NULL with len > 0; also after a full
     * buffer). *sent_out (may be NULL) receives how many were sent.
     * Returns LOOPD_OK when every one was sent, else the status of the
     * first one that was not; LOOPD_ERR_NO_SUCH_CONN, LOOPD_ERR_UNSUPPORTED
     * (socket is a stream) and LOOPD_ERR_INVALID (msgs NULL with count > 0)
     * before any is tried (statuses untouched). Loop thread. Absent (NULL)
     * in an earlier 1.4 host: check struct_size, or call send_datagram per
     * datagram. */
    int32_t (*send_datagrams)(loopd_ctx *ctx, uint64_t socket,
                              loopd_datagram *msgs, size_t count,
                              size_t *sent_out);
} loopd_host_api;

/* Hooks the handler implements. Every pointer may be NULL ("not
 * interested"). `instance` is what create() stored (NULL if create is
 * NULL); `conn_state` is what on_open() stored (NULL if on_open is NULL or
 * stored nothing). Extensible. */
typedef struct loopd_vtable {
    uint32_t struct_size;
    uint32_t reserved; /* 0 */

    /* Create an instance for a [[handler]] entry. instance_name and
     * config_json (the entry's [handler.config] table as JSON, "{}" when
     * absent) are NUL-terminated and borrowed for this call. Store the
     * instance in *instance_out. On failure return a negative status and
     * write a NUL-terminated reason into err: err is never NULL and has
     * err_cap >= 1 bytes, the NUL included. loopd then exits before
     * listening.
     * With [runtime] workers = N, create runs once per worker, each on
     * that worker's thread: N instances of one entry, each seeing only
     * its own worker's connections, datagrams and timers, and never
     * called from another worker's thread. State that must span them (a
     * chat's members) goes through post_siblings; process-global state in
     * a plugin (statics) is shared by all N and needs locking. */
    int32_t (*create)(const loopd_host_api *host, loopd_ctx *ctx,
                      const char *instance_name, const char *config_json,
                      void **instance_out, char *err, size_t err_cap);

    /* Free the instance. Last call for it: every connection got on_close
     * and no timer fires afterwards. */
    void (*destroy)(loopd_ctx *ctx, void *instance);

    /* A connection was accepted or an outbound connect() succeeded. Store
     * per-connection state in *conn_state. A negative return refuses the
     * connection: it is aborted and on_close(LOOPD_REASON_HANDLER) follows. */
    int32_t (*on_open)(loopd_ctx *ctx, void *instance, uint64_t conn,
                       const loopd_conn_info *info, void **conn_state);

    /* One frame (see LOOPD_FRAMING_*). data is borrowed for this call and
     * may be NULL when len is 0. A negative return closes the connection
     * (on_close(LOOPD_REASON_HANDLER) follows). */
    int32_t (*on_data)(loopd_ctx *ctx, void *instance, uint64_t conn,
                       void *conn_state, const uint8_t *data, size_t len);

    /* The peer shut down its sending side; every complete frame has been
     * delivered. Return LOOPD_EOF_CLOSE (also what a NULL hook means) to
     * close once the output queue is flushed, or LOOPD_EOF_KEEP_OPEN to
     * keep sending and call close() later. */
    int32_t (*on_eof)(loopd_ctx *ctx, void *instance, uint64_t conn,
                      void *conn_state);

    /* A send() or sendv() on this connection returned LOOPD_ERR_AGAIN and
     * its output queue has since drained below the low watermark. */
    void (*on_writable)(loopd_ctx *ctx, void *instance, uint64_t conn,
                        void *conn_state);

    /* The connection is gone (reason: LOOPD_REASON_*). Called exactly once
     * for every id the handler was given (by on_open or connect()), and
     * last: free conn_state here. The id is stale afterwards. */
    void (*on_close)(loopd_ctx *ctx, void *instance, uint64_t conn,
                     void *conn_state, int32_t reason);

    /* A datagram arrived on a datagram socket of this instance. peer and
     * data are borrowed for this call. A plugin that leaves both this and
     * on_datagrams NULL takes no datagrams, and one that leaves every
     * connection hook NULL takes no connections: loopd refuses a listener
     * of that kind for it (at start, in loopd check and on a reload). */
    void (*on_datagram)(loopd_ctx *ctx, void *instance, uint64_t socket,
                        const loopd_addr *peer, const uint8_t *data,
                        size_t len);

    /* A timer set with timer_set fired. */
    void (*on_timer)(loopd_ctx *ctx, void *instance, uint64_t timer,
                     uint64_t user_data);

    /* loopd is shutting down: listeners are closed and open connections
     * get shutdown_timeout_ms to finish. Close idle connections here. */
    void (*on_shutdown)(loopd_ctx *ctx, void *instance);

    /* --- 1.1 --- */

    /* One call per listener of the instance, once all listeners are open
     * and before any connection or datagram is delivered. For a datagram
     * listener (LOOPD_TRANSPORT_UDP), `listener` is the socket id to pass to
     * send_datagram: a handler can send before it has received anything. */
    void (*on_listen)(loopd_ctx *ctx, void *instance, uint64_t listener,
                      const loopd_listen_info *info);

    /* A frame over max_frame is arriving (line or length-prefixed framing):
     * frame_size is its size as far as known (for a line without its end
     * yet, the bytes seen so far). Return LOOPD_OVERSIZE_SKIP to have loopd
     * discard that frame without buffering it (a line up to its "\n", a
     * length-prefixed payload by its announced length) and go on with the
     * next one; anything else (and a NULL hook) closes the connection with
     * LOOPD_REASON_FRAME_TOO_BIG, as in 1.0. The hook may send, e.g. an
     * error reply. */
    int32_t (*on_oversize)(loopd_ctx *ctx, void *instance, uint64_t conn,
                           void *conn_state, uint64_t frame_size,
                           uint64_t max_frame);

    /* Line framing: the peer closed after a last line without its "\n".
     * With this hook the bytes come here instead of on_data (a handler that
     * must not act on a half-written line ignores them); with a NULL hook
     * they are delivered by on_data, as in 1.0. Borrowed for the call. */
    void (*on_partial)(loopd_ctx *ctx, void *instance, uint64_t conn,
                       void *conn_state, const uint8_t *data, size_t len);

    /* --- 1.3 --- */

    /* A message posted to this instance (host post, or Handle::post from
     * another thread of an embedding program). msg is borrowed for the
     * call. Messages arrive in the order they were posted, one call each. */
    void (*on_message)(loopd_ctx *ctx, void *instance, const uint8_t *msg,
                       size_t len);

    /* A descriptor watched with watch_fd is ready: events is a mask of
     * LOOPD_FD_READABLE, LOOPD_FD_WRITABLE and LOOPD_FD_HUP. Read or write
     * the fd here (non-blocking); the watch reports again while it stays
     * ready. */
    void (*on_fd)(loopd_ctx *ctx, void *instance, uint64_t watch,
                  uint64_t user_data, uint32_t events);

    /* --- 1.4 --- */

    /* Several datagrams that arrived on one datagram socket, in order
     * (what one recvmmsg(2) took): with this hook loopd calls it instead of
     * on_datagram, so a handler can answer them all with one
     * send_datagrams. msgs and the bytes they point to are borrowed for the
     * call; count >= 1. An echo may pass msgs itself to send_datagrams
     * (cast to non-const: loopd then writes the statuses into it). A host
     * that predates it calls on_datagram, so a plugin that sets it keeps
     * on_datagram too. */
    void (*on_datagrams)(loopd_ctx *ctx, void *instance, uint64_t socket,
                         const loopd_datagram *msgs, size_t count);
} loopd_vtable;

/* What loopd_plugin_entry_v1 returns. Must stay valid for the life of the
 * process (a static is ideal). Extensible. */
typedef struct loopd_plugin_info {
    uint32_t struct_size;    /* sizeof(loopd_plugin_info) */
    uint32_t abi_major;      /* LOOPD_ABI_MAJOR the plugin was built for */
    uint32_t abi_minor;      /* LOOPD_ABI_MINOR the plugin was built for */
    uint32_t min_host_minor; /* oldest host minor it works with (0 = any) */
    const char *name;        /* NUL-terminated, e.g. "echo" */
    const char *version;     /* NUL-terminated, e.g. "0.1.0" */
    uint32_t default_framing; /* LOOPD_FRAMING_* (DEFAULT = no preference) */
    uint32_t reserved;        /* 0 */
    const loopd_vtable *vtable; /* never NULL */
    /* --- 1.4 --- */
    /* The ALPN protocols its tls:// listeners offer, comma-separated, most
     * preferred first (e.g. "http/1.1"); NULL or "" = none. A handler
     * entry's tls_alpn key replaces them. */
    const char *alpn;
    /* --- 1.5 --- */
    /* The framings the handler works with, as LOOPD_FRAMING_BIT()s ORed
     * together (0 = any). loopd refuses a [[handler]] entry whose framing
     * (its framing key, else default_framing, else raw) is not one of
     * them, at start, in loopd check and on a reload, naming the framing
     * key; default_framing (raw when it is DEFAULT) must be one of them,
     * or the plugin is refused when it loads. Bits of framings this loopd
     * does not know are ignored, but a mask with no bit it knows is
     * refused. A host older than 1.5 ignores the field: a handler that
     * must not run with another framing still checks
     * loopd_conn_info.framing in on_open. */
    uint32_t framings;
    uint32_t reserved2; /* 0 */
} loopd_plugin_info;

/* The entry point. host is static and valid for the life of the process.
 * Return the plugin's info, or NULL to refuse to load (for example because
 * host->abi_minor is too old). */
LOOPD_EXPORT const loopd_plugin_info *
loopd_plugin_entry_v1(const loopd_host_api *host);

typedef const loopd_plugin_info *(*loopd_plugin_entry_v1_fn)(
    const loopd_host_api *host);

#ifdef __cplusplus
}
#endif

#endif /* LOOPD_H */
