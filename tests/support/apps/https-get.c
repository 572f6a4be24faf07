/* A small HTTPS client for tests and the bench, put into sandboxes (static, OpenSSL): GET PATH from
 * HOST[:PORT] through the proxy $https_proxy names (http://ADDRESS:PORT), checking the certificate
 * against OpenSSL's default paths (SSL_CERT_FILE), then print each answer.
 *
 *   https-get [-k] [-r N] [-w SECONDS] HOST[:PORT] PATH [HEADER: VALUE ...]
 *
 * -k: do not check the certificate; -r N: N requests on one kept-alive connection (each answer read
 * by its Content-Length), printing the milliseconds each took on stderr; -w: wait that long before
 * exiting (for a test that looks at the process meanwhile). Exit 2 when the certificate is refused. */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <netinet/in.h>
#include <openssl/err.h>
#include <openssl/ssl.h>
#include <openssl/x509v3.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <strings.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

static int proxy_socket(const char *host, const char *port) {
    const char *proxy = getenv("https_proxy");
    if (!proxy || strncmp(proxy, "http://", 7) != 0) { fprintf(stderr, "no https_proxy\n"); exit(1); }
    char address[64]; int proxy_port = 0;
    if (sscanf(proxy + 7, "%63[^:]:%d", address, &proxy_port) != 2) { fprintf(stderr, "bad https_proxy\n"); exit(1); }
    struct sockaddr_in to = { .sin_family = AF_INET, .sin_port = htons(proxy_port) };
    inet_pton(AF_INET, address, &to.sin_addr);
    int fd = socket(AF_INET, SOCK_STREAM, 0);
    if (connect(fd, (struct sockaddr *)&to, sizeof to) != 0) { perror("connect"); exit(1); }
    char line[1024];
    int n = snprintf(line, sizeof line, "CONNECT %s:%s HTTP/1.1\r\nHost: %s:%s\r\n\r\n", host, port, host, port);
    if (write(fd, line, n) != n) { perror("write"); exit(1); }
    char answer[4096]; size_t got = 0;
    while (got < sizeof answer - 1) {  /* one byte at a time: nothing past the answer's head is read */
        if (read(fd, answer + got, 1) != 1) break;
        got++;
        answer[got] = 0;
        if (got >= 4 && strcmp(answer + got - 4, "\r\n\r\n") == 0) break;
    }
    if (strncmp(answer, "HTTP/1.1 200", 12) != 0) {  /* the proxy's refusal, body and all */
        fputs(answer, stdout);
        while ((n = read(fd, line, sizeof line)) > 0) fwrite(line, 1, n, stdout);
        exit(1);
    }
    return fd;
}

static double now_ms(void) {
    struct timespec t;
    clock_gettime(CLOCK_MONOTONIC, &t);
    return t.tv_sec * 1000.0 + t.tv_nsec / 1e6;
}

int main(int argc, char **argv) {
    int check = 1, rounds = 1, wait_after = 0, opt;
    while ((opt = getopt(argc, argv, "kr:w:")) != -1) {
        if (opt == 'k') check = 0;
        else if (opt == 'r') rounds = atoi(optarg);
        else if (opt == 'w') wait_after = atoi(optarg);
        else return 1;
    }
    if (argc - optind < 2) { fprintf(stderr, "usage: https-get [-k] [-r N] [-w S] HOST[:PORT] PATH [HEADER ...]\n"); return 1; }
    char host[256], port[16] = "443";
    if (sscanf(argv[optind], "%255[^:]:%15s", host, port) < 1) return 1;
    const char *path = argv[optind + 1];
    SSL_CTX *ctx = SSL_CTX_new(TLS_client_method());
    if (check) {
        SSL_CTX_set_default_verify_paths(ctx);
        SSL_CTX_set_verify(ctx, SSL_VERIFY_PEER, NULL);
    }
    SSL *ssl = SSL_new(ctx);
    SSL_set_tlsext_host_name(ssl, host);
    if (check) SSL_set1_host(ssl, host);
    SSL_set_fd(ssl, proxy_socket(host, port));
    if (SSL_connect(ssl) != 1) {
        long verdict = SSL_get_verify_result(ssl);
        printf("verify failed: %s\n", verdict != X509_V_OK ? X509_verify_cert_error_string(verdict) : "handshake");
        return 2;
    }
    static char request[16384], answer[1 << 20];
    for (int round = 0; round < rounds; round++) {
        int n = snprintf(request, sizeof request, "GET %s HTTP/1.1\r\nHost: %s\r\n", path, host);
        for (int i = optind + 2; i < argc; i++) n += snprintf(request + n, sizeof request - n, "%s\r\n", argv[i]);
        n += snprintf(request + n, sizeof request - n, "%s\r\n", round == rounds - 1 ? "Connection: close\r\n" : "");
        double started = now_ms();
        if (SSL_write(ssl, request, n) != n) { fprintf(stderr, "write failed\n"); return 1; }
        size_t got = 0; long length = -1; char *body = NULL;
        for (;;) {
            int r = SSL_read(ssl, answer + got, sizeof answer - 1 - got);
            if (r <= 0) break;
            got += r;
            answer[got] = 0;
            if (!body && (body = strstr(answer, "\r\n\r\n")) != NULL) {
                body += 4;
                char *cl = strcasestr(answer, "\r\nContent-Length:");
                if (cl && cl < body) length = atol(cl + 17);
            }
            if (body && length >= 0 && (long)(answer + got - body) >= length) break;
        }
        if (rounds > 1) fprintf(stderr, "%.3f\n", now_ms() - started);
        fwrite(answer, 1, got, stdout);
    }
    fflush(stdout);
    if (wait_after) sleep(wait_after);
    return 0;
}
