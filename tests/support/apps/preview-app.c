/*
 * preview-app: a small HTTP/1.1 and WebSocket server that the preview URL tests put into a
 * sandbox (any image: it is static). `preview-app <port> [<bind address>]`, one process per
 * connection, keep-alive. Routes:
 *   /hello            "hello <pid> <n>": the serving process and its request count (keep-alive shows)
 *   /headers          the method, target and request headers, as received
 *   /big/<n>          n bytes (Content-Length)
 *   /upload           reads a body (Content-Length or chunked), answers "<bytes> <fnv-1a 32>"
 *   /chunked          a chunked response of three chunks
 *   /sse              text/event-stream: five events, 300 ms apart
 *   /redirect         302 to /hello
 *   /ws               WebSocket: echoes text and binary messages
 *
 * `preview-app fetch <port> <path> <count>` is a client for the bench: <count> GETs of <path> on
 * 127.0.0.1:<port> over one keep-alive connection; prints each one's microseconds and bytes.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/tcp.h>
#include <signal.h>
#include <stdarg.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static int fd;
static char buf[1 << 16];
static size_t have;

static int fill(void) {
    if (have == sizeof buf) return -1;
    ssize_t n = read(fd, buf + have, sizeof buf - have);
    if (n <= 0) return -1;
    have += (size_t)n;
    return 0;
}

static void consume(size_t n) { memmove(buf, buf + n, have - n); have -= n; }

static int send_all(const void *data, size_t n) {
    const char *p = data;
    while (n) {
        ssize_t w = write(fd, p, n);
        if (w < 0) { if (errno == EINTR) continue; return -1; }
        p += w; n -= (size_t)w;
    }
    return 0;
}

static int sendf(const char *fmt, ...) {
    char out[8192];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(out, sizeof out, fmt, ap);
    va_end(ap);
    return send_all(out, (size_t)n);
}

static int read_exact(void *out, size_t n) {
    char *p = out;
    while (n) {
        if (!have && fill() < 0) return -1;
        size_t take = have < n ? have : n;
        memcpy(p, buf, take);
        consume(take);
        p += take; n -= take;
    }
    return 0;
}

/* ---- SHA-1 and base64, for Sec-WebSocket-Accept */
static uint32_t rol(uint32_t v, int s) { return (v << s) | (v >> (32 - s)); }
static void sha1(const unsigned char *msg, size_t len, unsigned char out[20]) {
    uint32_t h[5] = {0x67452301, 0xEFCDAB89, 0x98BADCFE, 0x10325476, 0xC3D2E1F0};
    size_t total = ((len + 8) / 64 + 1) * 64;
    unsigned char *m = calloc(total, 1);
    memcpy(m, msg, len);
    m[len] = 0x80;
    uint64_t bits = (uint64_t)len * 8;
    for (int i = 0; i < 8; i++) m[total - 1 - i] = (unsigned char)(bits >> (8 * i));
    for (size_t off = 0; off < total; off += 64) {
        uint32_t w[80];
        for (int i = 0; i < 16; i++)
            w[i] = (uint32_t)m[off + 4 * i] << 24 | (uint32_t)m[off + 4 * i + 1] << 16 | (uint32_t)m[off + 4 * i + 2] << 8 | m[off + 4 * i + 3];
        for (int i = 16; i < 80; i++) w[i] = rol(w[i - 3] ^ w[i - 8] ^ w[i - 14] ^ w[i - 16], 1);
        uint32_t a = h[0], b = h[1], c = h[2], d = h[3], e = h[4];
        for (int i = 0; i < 80; i++) {
            uint32_t f, k;
            if (i < 20) { f = (b & c) | (~b & d); k = 0x5A827999; }
            else if (i < 40) { f = b ^ c ^ d; k = 0x6ED9EBA1; }
            else if (i < 60) { f = (b & c) | (b & d) | (c & d); k = 0x8F1BBCDC; }
            else { f = b ^ c ^ d; k = 0xCA62C1D6; }
            uint32_t t = rol(a, 5) + f + e + k + w[i];
            e = d; d = c; c = rol(b, 30); b = a; a = t;
        }
        h[0] += a; h[1] += b; h[2] += c; h[3] += d; h[4] += e;
    }
    free(m);
    for (int i = 0; i < 5; i++) for (int j = 0; j < 4; j++) out[4 * i + j] = (unsigned char)(h[i] >> (24 - 8 * j));
}

static void base64(const unsigned char *in, size_t n, char *out) {
    static const char t[] = "ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";
    size_t o = 0;
    for (size_t i = 0; i < n; i += 3) {
        uint32_t v = (uint32_t)in[i] << 16 | (i + 1 < n ? (uint32_t)in[i + 1] << 8 : 0) | (i + 2 < n ? in[i + 2] : 0);
        out[o++] = t[v >> 18 & 63];
        out[o++] = t[v >> 12 & 63];
        out[o++] = i + 1 < n ? t[v >> 6 & 63] : '=';
        out[o++] = i + 2 < n ? t[v & 63] : '=';
    }
    out[o] = 0;
}

/* ---- WebSocket echo */
static int ws_send(int opcode, const unsigned char *data, uint64_t n) {
    unsigned char head[10];
    size_t h = 0;
    head[h++] = (unsigned char)(0x80 | opcode);
    if (n < 126) head[h++] = (unsigned char)n;
    else if (n < 65536) { head[h++] = 126; head[h++] = (unsigned char)(n >> 8); head[h++] = (unsigned char)n; }
    else { head[h++] = 127; for (int i = 7; i >= 0; i--) head[h++] = (unsigned char)(n >> (8 * i)); }
    return send_all(head, h) || send_all(data, (size_t)n);
}

static void websocket(const char *key) {
    char joined[320], accept[64];
    unsigned char digest[20];
    snprintf(joined, sizeof joined, "%s258EAFA5-E914-47DA-95CA-C5AB0DC85B11", key);
    sha1((unsigned char *)joined, strlen(joined), digest);
    base64(digest, 20, accept);
    sendf("HTTP/1.1 101 Switching Protocols\r\nUpgrade: websocket\r\nConnection: Upgrade\r\n"
          "Sec-WebSocket-Accept: %s\r\n\r\n", accept);
    for (;;) {
        unsigned char head[2], mask[4];
        if (read_exact(head, 2) < 0) return;
        int opcode = head[0] & 15;
        uint64_t n = head[1] & 127;
        if (n == 126) { unsigned char e[2]; if (read_exact(e, 2) < 0) return; n = (uint64_t)e[0] << 8 | e[1]; }
        else if (n == 127) { unsigned char e[8]; if (read_exact(e, 8) < 0) return; n = 0; for (int i = 0; i < 8; i++) n = n << 8 | e[i]; }
        if (!(head[1] & 128) || read_exact(mask, 4) < 0) return;
        unsigned char *data = malloc(n ? n : 1);
        if (!data || read_exact(data, (size_t)n) < 0) return;
        for (uint64_t i = 0; i < n; i++) data[i] ^= mask[i % 4];
        if (opcode == 8) { ws_send(8, data, n >= 2 ? 2 : 0); free(data); return; }
        if (opcode == 9) ws_send(10, data, n);
        else if (opcode == 1 || opcode == 2) ws_send(opcode, data, n);
        free(data);
    }
}

/* ---- HTTP */
static const char *header(const char *head, const char *name) {
    static char value[1024];
    size_t len = strlen(name);
    for (const char *line = strstr(head, "\r\n"); line && line[2]; line = strstr(line + 2, "\r\n")) {
        if (strncasecmp(line + 2, name, len) == 0 && line[2 + len] == ':') {
            const char *v = line + 3 + len;
            while (*v == ' ') v++;
            size_t n = strcspn(v, "\r");
            if (n >= sizeof value) n = sizeof value - 1;
            memcpy(value, v, n);
            value[n] = 0;
            return value;
        }
    }
    return NULL;
}

static int body(const char *head, unsigned long *count, uint32_t *fnv) {
    const char *te = header(head, "Transfer-Encoding"), *cl = header(head, "Content-Length");
    *count = 0; *fnv = 2166136261u;
    unsigned long want = cl ? strtoul(cl, NULL, 10) : 0;
    int chunked = te && strcasestr(te, "chunked");
    for (;;) {
        if (chunked) {
            char *end;
            while (!(end = memmem(buf, have, "\r\n", 2))) if (fill() < 0) return -1;
            want = strtoul(buf, NULL, 16);
            consume((size_t)(end - buf) + 2);
            if (want == 0) {
                while (!memmem(buf, have, "\r\n", 2)) if (fill() < 0) return -1;
                consume((size_t)((char *)memmem(buf, have, "\r\n", 2) - buf) + 2);
                return 0;
            }
        }
        while (want > 0) {
            if (!have && fill() < 0) return -1;
            size_t take = have < want ? have : want;
            for (size_t i = 0; i < take; i++) { *fnv ^= (unsigned char)buf[i]; *fnv *= 16777619u; }
            *count += take; want -= take;
            consume(take);
        }
        if (!chunked) return 0;
        if (read_exact((char[2]){0}, 2) < 0) return -1;
    }
}

static void serve(void) {
    int requests = 0;
    for (;;) {
        char *end;
        while (!(end = memmem(buf, have, "\r\n\r\n", 4))) if (fill() < 0) return;
        size_t head_len = (size_t)(end - buf) + 4;
        char head[16384];
        if (head_len >= sizeof head) return;
        memcpy(head, buf, head_len);
        head[head_len] = 0;
        consume(head_len);
        requests++;
        char method[16] = "", target[2048] = "";
        sscanf(head, "%15s %2047s", method, target);
        const char *upgrade = header(head, "Upgrade");  /* header() answers in one buffer: test before the next */
        int wants_ws = upgrade && strcasecmp(upgrade, "websocket") == 0;
        const char *key = header(head, "Sec-WebSocket-Key");
        if (strcmp(target, "/ws") == 0 && wants_ws && key) {
            char saved[256];
            snprintf(saved, sizeof saved, "%s", key);
            websocket(saved);
            return;
        }
        unsigned long count;
        uint32_t fnv;
        if (strcmp(target, "/upload") == 0) {
            if (body(head, &count, &fnv) < 0) return;
            char out[64];
            int n = snprintf(out, sizeof out, "%lu %u", count, fnv);
            sendf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\n\r\n%s", n, out);
        } else if (body(head, &count, &fnv) < 0) {
            return;
        } else if (strcmp(target, "/hello") == 0) {
            char out[64];
            int n = snprintf(out, sizeof out, "hello %d %d", (int)getpid(), requests);
            sendf("HTTP/1.1 200 OK\r\nContent-Length: %d\r\nX-App: preview-test\r\nSet-Cookie: a=1\r\n"
                  "Set-Cookie: b=2\r\n\r\n%s", n, out);
        } else if (strcmp(target, "/headers") == 0) {
            sendf("HTTP/1.1 200 OK\r\nContent-Length: %zu\r\n\r\n", strlen(head));
            send_all(head, strlen(head));
        } else if (strncmp(target, "/big/", 5) == 0) {
            unsigned long n = strtoul(target + 5, NULL, 10);
            sendf("HTTP/1.1 200 OK\r\nContent-Length: %lu\r\nContent-Type: application/octet-stream\r\n\r\n", n);
            static char block[65536];
            for (size_t i = 0; i < sizeof block; i++) block[i] = (char)('a' + i % 26);
            if (strcmp(method, "HEAD") == 0) n = 0;  /* the headers only */
            while (n) { size_t take = n < sizeof block ? n : sizeof block; if (send_all(block, take)) return; n -= take; }
        } else if (strcmp(target, "/chunked") == 0) {
            sendf("HTTP/1.1 200 OK\r\nTransfer-Encoding: chunked\r\n\r\n5\r\none, \r\n5\r\ntwo, \r\n5\r\nthree\r\n0\r\n\r\n");
        } else if (strcmp(target, "/sse") == 0) {
            sendf("HTTP/1.1 200 OK\r\nContent-Type: text/event-stream\r\nCache-Control: no-cache\r\nConnection: close\r\n\r\n");
            for (int i = 0; i < 5; i++) { sendf("data: event %d\n\n", i); usleep(300000); }
            return;
        } else if (strcmp(target, "/redirect") == 0) {
            sendf("HTTP/1.1 302 Found\r\nLocation: /hello\r\nContent-Length: 0\r\n\r\n");
        } else {
            sendf("HTTP/1.1 404 Not Found\r\nContent-Length: 9\r\n\r\nnot found");
        }
        const char *connection = header(head, "Connection");
        if (connection && strcasecmp(connection, "close") == 0) return;
    }
}

static long long now_us(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000000LL + ts.tv_nsec / 1000;
}

static int fetch(int port, const char *path, int count) {
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    inet_pton(AF_INET, "127.0.0.1", &addr.sin_addr);
    fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&addr, sizeof addr) < 0) { perror("connect"); return 1; }
    int one = 1;
    setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);
    for (int i = 0; i < count; i++) {
        long long started = now_us();
        sendf("GET %s HTTP/1.1\r\nHost: 127.0.0.1:%d\r\n\r\n", path, port);
        char *end;
        while (!(end = memmem(buf, have, "\r\n\r\n", 4))) if (fill() < 0) return 1;
        char head[4096];
        size_t head_len = (size_t)(end - buf) + 4;
        if (head_len >= sizeof head) return 1;
        memcpy(head, buf, head_len);
        head[head_len] = 0;
        consume(head_len);
        const char *cl = header(head, "Content-Length");
        unsigned long left = cl ? strtoul(cl, NULL, 10) : 0, size = left;
        while (left) {
            if (!have && fill() < 0) return 1;
            size_t take = have < left ? have : left;
            consume(take);
            left -= take;
        }
        printf("%lld %lu\n", now_us() - started, size);
    }
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 4 && strcmp(argv[1], "fetch") == 0) return fetch(atoi(argv[2]), argv[3], atoi(argv[4]));
    signal(SIGCHLD, SIG_IGN);
    signal(SIGPIPE, SIG_IGN);
    int port = argc > 1 ? atoi(argv[1]) : 8000;
    int server = socket(AF_INET, SOCK_STREAM, 0), one = 1;
    setsockopt(server, SOL_SOCKET, SO_REUSEADDR, &one, sizeof one);
    struct sockaddr_in addr = {.sin_family = AF_INET, .sin_port = htons((unsigned short)port)};
    inet_pton(AF_INET, argc > 2 ? argv[2] : "0.0.0.0", &addr.sin_addr);
    if (bind(server, (struct sockaddr *)&addr, sizeof addr) < 0 || listen(server, 128) < 0) { perror("bind"); return 1; }
    for (;;) {
        fd = accept(server, NULL, NULL);
        if (fd < 0) continue;
        setsockopt(fd, IPPROTO_TCP, TCP_NODELAY, &one, sizeof one);  /* as web servers do */
        if (fork() == 0) { close(server); serve(); _exit(0); }
        close(fd);
    }
}
