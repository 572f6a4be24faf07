/*
 * sandbox-agent: the far end of the server's persistent command channel, run inside a
 * sandbox by one long-lived `podman exec -i`. It starts commands, records them under
 * /run/mcp-sandbox/commands/<id>/ and /var/lib/mcp-sandbox/output/<id>.std{out,err}
 * exactly as the shell library in sandbox/records.py does (so a
 * restarted server reads them back the same way), enforces timeouts inside the sandbox,
 * and reports over stdout. When its channel closes it keeps supervising the commands it
 * started until they end, so their results are recorded even if the server is gone.
 *
 * Requests (stdin), one header line each, then a payload of the given length:
 *   run <cmd_id> <timeout_s> <started_ms> <cap> <len> [<flags>]\n<command>   (started_ms: unused,
 *                                   kept for older servers; the agent records the start on its own
 *                                   clock. flags: 1 stdin kept open, 2 a terminal, 4 stdin from
 *                                   <output>/<cmd_id>.stdin, written before with put)
 *   stdin <req> <cmd_id> <close> <len>\n<data>   (to a command's kept-open stdin or terminal)
 *   signal <req> <cmd_id> <signum>\n             (to the command's process group)
 *   read <req> <offset> <length> <path_len>\n<path>
 *   ls <req> <depth> <max_entries> <path_len>\n<path>
 *   report <req> <cmd_id> <cap> [<stdout_offset> <stderr_offset>]\n
 *   put <req> <mode_octal> <path_len> <data_len>\n<path><data>
 *   list <req>\n                      (the sandbox's commands, as list_commands in records.py)
 *   link <req> <max_size> <file_id> <path_len>\n<path>   (as link_file in records.py)
 *   ping <req>\n
 * Replies and events (stdout):
 *   started <cmd_id> <pid>\n          failed <cmd_id> <reason>\n
 *   exit <cmd_id> <len>\n<report>     report <req> <len>\n<report>
 *   put <req> ok\n | put <req> error <reason>\n     pong <req>\n
 *   list <req> <len>\n<lines>         link <req> <verdict>\n
 *   stdin <req> ok <written> <tty 0|1> <stdout size> <stderr size>\n (sizes before the write) | stdin <req> error <why>\n   signal <req> ok\n | signal <req> error <why>\n
 *   read <req> <len>\n<frame>          ls <req> <len>\n<frame>   (frames as read_file and list_files
 *                                     of records.py print them)
 * A report is the MCPSB2 frame parsed by records.parse_report.
 *
 * A command whose stdin is kept open (or that runs on a terminal) reads a FIFO, <dir>/stdin, which
 * anyone may write (this agent, one started after a restart of the server, or the shell library
 * over podman exec). `agent wrap <plain|hold|tty> <dir> <argv...>` runs such a command: it keeps
 * the FIFO open until <dir>/stdin_closed appears (hold), or runs the command on a pseudo-terminal
 * whose input is the FIFO and whose output goes to its own stdout (tty, recording the terminal's
 * process group in <dir>/pgid); it exits as the command did. `plain` only resets the signals a shell's
 * background job ignores, so that INT reaches the command.
 *
 * `agent relay <port>` is another use of the same binary: it connects to 127.0.0.1:<port>
 * (else [::1]:<port>) inside the sandbox, says "ok\n" on stdout, and then relays stdin to the
 * connection and the connection to stdout until both ends close; a refused connection exits 3
 * with the reason on stderr. The server forwards a preview URL's connections through it where it
 * cannot enter the sandbox's network namespace itself (gVisor, rootless Podman).
 *
 * `agent <output_file_max> fd3`: the channel is descriptor 3 (a socket the server passed through
 * `podman exec --preserve-fds=1`), not stdin and stdout: requests and replies then go straight
 * between the server and this agent, with no podman process relaying every message. The agent
 * makes it its stdin and stdout, so that everything below reads and writes as before.
 *
 * Output files are bounded: `agent [<output_file_max>]`. While a command runs (and for a
 * while after, for background processes still writing), a stream file longer than that keeps
 * its first and its last half; the middle is punched out (a sparse hole, so byte offsets stay
 * true) and the dropped range is recorded as <dir>/stdout_dropped ("<from> <to>"). Reports
 * never return bytes from a dropped range: a cursor inside one moves to its end.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdarg.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <dirent.h>
#include <termios.h>
#include <arpa/inet.h>
#include <netinet/in.h>
#include <sys/ioctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/types.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

#ifndef FALLOC_FL_PUNCH_HOLE /* musl and glibc define them in fcntl.h under _GNU_SOURCE */
#define FALLOC_FL_KEEP_SIZE 0x01
#define FALLOC_FL_PUNCH_HOLE 0x02
#endif

/* The in-sandbox layout of sandbox/layout.py (tests/unit checks that they agree). */
#define COMMANDS_DIR "/run/mcp-sandbox/commands"     /* tmpfs: records */
#define OUTPUT_DIR "/var/lib/mcp-sandbox/output"     /* disk: <id>.stdout, <id>.stderr */
#define LINKS_DIR "/var/lib/mcp-sandbox/links"       /* disk: <file_id> holding a path */
#define ENV_PATH "/var/lib/mcp-sandbox/env"          /* NAME=value lines every command gets */
#define MAX_COMMANDS 512
#define INLINE_COMMAND_MAX 100000
#define MAX_REQUEST (64L * 1024 * 1024)
#define KILL_GRACE_MS 2000
/* Creating a file costs ~0.4 ms on overlayfs, overwriting one next to nothing: the next
 * command's directory and files are made ahead of time, off the request's path. */
#define SPARE_DIR COMMANDS_DIR "/.spare"
#define SPARE_OUTPUT OUTPUT_DIR "/.spare"
static const char *SPARE_FILES[] = {"command", "started", "pid", "exit.tmp", "finished.tmp"};
static int spare_ready = 0;

struct command {
    int used;
    char id[32];
    pid_t pid;
    long long deadline_ms; /* monotonic; 0 = none */
    long long kill_at_ms;  /* monotonic; 0 = none pending */
    int exited;            /* leader reaped, slot kept only for a pending SIGKILL */
    long cap;
    long oom_kills_before; /* the sandbox's OOM-kill counter when the command started */
};

static struct command commands[MAX_COMMANDS];

/* Output files watched for their bound: a command's, until it has ended and they have not
 * grown for WATCH_QUIET_MS (a background process of the command may still be writing). */
#define WATCH_INTERVAL_MS 100
#define WATCH_QUIET_MS 30000
#define PUNCH_STEP (1L << 20)
struct watch {
    int used;
    char id[32];
    long long quiet_since_ms; /* monotonic: last growth after the command ended; 0 while it runs */
    long last_size[2];
    long punched_to[2];
};
static struct watch watches[MAX_COMMANDS];
static long output_file_max = 64L * 1024 * 1024;
static const char *STREAMS[2] = {"stdout", "stderr"};
static int wake_pipe[2];
static int channel_ok = 1;

static long long monotonic_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_MONOTONIC, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

/* Wall-clock milliseconds: the clock of a command's recorded start (the server's, on this host). */
static long long realtime_ms(void) {
    struct timespec ts;
    clock_gettime(CLOCK_REALTIME, &ts);
    return ts.tv_sec * 1000LL + ts.tv_nsec / 1000000;
}

static int write_all(int fd, const char *data, size_t n) {
    while (n > 0) {
        ssize_t w = write(fd, data, n);
        if (w < 0) {
            if (errno == EINTR) continue;
            return -1;
        }
        data += w;
        n -= (size_t)w;
    }
    return 0;
}

static void emit(const char *data, size_t n) {
    if (channel_ok && write_all(STDOUT_FILENO, data, n) < 0) channel_ok = 0;
}

static void emitf(const char *fmt, ...) {
    char line[512];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n > 0) emit(line, (size_t)(n < (int)sizeof line ? n : (int)sizeof line - 1));
}

/* mkdir, or fine if a directory is already there (errno ENOTDIR when a file is). */
static int ensure_dir(const char *path) {
    struct stat st;
    if (mkdir(path, 0755) == 0) return 0;
    if (errno != EEXIST) return -1;
    if (stat(path, &st) == 0 && S_ISDIR(st.st_mode)) return 0;
    errno = ENOTDIR;
    return -1;
}

static int mkdirs(const char *path) {
    char buf[4096];
    size_t len = strlen(path);
    if (len >= sizeof buf) return -1;
    memcpy(buf, path, len + 1);
    for (char *p = buf + 1; *p; p++) {
        if (*p == '/') {
            *p = 0;
            if (ensure_dir(buf) < 0) return -1;
            *p = '/';
        }
    }
    return ensure_dir(buf);
}

/* Write a file through a temporary name, so readers never see half of it. */
static int write_file(const char *path, const char *data, size_t n, mode_t mode) {
    char tmp[4200];
    snprintf(tmp, sizeof tmp, "%s.tmp.%d", path, (int)getpid());
    int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, mode);
    if (fd < 0) return -1;
    if (write_all(fd, data, n) < 0) {
        close(fd);
        unlink(tmp);
        return -1;
    }
    if (fchmod(fd, mode) < 0) { /* umask must not narrow the mode asked for */ }
    close(fd);
    if (rename(tmp, path) < 0) {
        unlink(tmp);
        return -1;
    }
    return 0;
}

static int write_text(const char *dir, const char *name, const char *fmt, ...) {
    char path[4200], text[64];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(text, sizeof text, fmt, ap);
    va_end(ap);
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return write_file(path, text, (size_t)n, 0644);
}

/* Overwrites a file in place (made ahead of time in the spare directory when possible). */
static int overwrite_text(const char *dir, const char *name, const char *data, size_t n) {
    char path[4200];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC | O_NOFOLLOW, 0644);
    if (fd < 0) return -1;
    int rc = write_all(fd, data, n);
    close(fd);
    return rc;
}

/* Writes name.tmp (made ahead of time) and renames it to name: readers see all or nothing. */
static int publish_text(const char *dir, const char *name, const char *text) {
    char tmp_name[64], from[4200], to[4200];
    snprintf(tmp_name, sizeof tmp_name, "%s.tmp", name);
    if (overwrite_text(dir, tmp_name, text, strlen(text)) < 0) return -1;
    snprintf(from, sizeof from, "%s/%s", dir, tmp_name);
    snprintf(to, sizeof to, "%s/%s", dir, name);
    return rename(from, to);
}

static void prepare_spare(void) {
    if (spare_ready) return;
    if (mkdir(SPARE_DIR, 0755) < 0 && errno != EEXIST) return;
    for (size_t i = 0; i < sizeof SPARE_FILES / sizeof *SPARE_FILES; i++)
        if (overwrite_text(SPARE_DIR, SPARE_FILES[i], "", 0) < 0) return;
    if (mkdirs(OUTPUT_DIR) < 0 || overwrite_text(OUTPUT_DIR, ".spare.stdout", "", 0) < 0 ||
        overwrite_text(OUTPUT_DIR, ".spare.stderr", "", 0) < 0)
        return;
    spare_ready = 1;
}

static int valid_command_id(const char *id) {
    if (strncmp(id, "cmd_", 4) != 0 || strlen(id) != 20) return 0;
    for (const char *p = id + 4; *p; p++)
        if (!((*p >= '0' && *p <= '9') || (*p >= 'a' && *p <= 'f'))) return 0;
    return 1;
}

/* Reads a small file of digits; returns its digits (at most max) in out. */
static void read_digits(const char *dir, const char *name, char *out, size_t max) {
    char path[4200], buf[64];
    snprintf(path, sizeof path, "%s/%s", dir, name);
    out[0] = 0;
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) return;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return;
    size_t k = 0;
    for (ssize_t i = 0; i < n && k < max; i++)
        if (buf[i] >= '0' && buf[i] <= '9') out[k++] = buf[i];
    out[k] = 0;
}

static int file_exists(const char *dir, const char *name) {
    char path[4200];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    return lstat(path, &st) == 0;
}

struct buffer {
    char *data;
    size_t len, size;
};

static void buf_append(struct buffer *b, const char *data, size_t n) {
    if (b->len + n > b->size) {
        size_t size = b->size ? b->size : 4096;
        while (size < b->len + n) size *= 2;
        char *grown = realloc(b->data, size);
        if (!grown) return;
        b->data = grown;
        b->size = size;
    }
    memcpy(b->data + b->len, data, n);
    b->len += n;
}

static void buf_printf(struct buffer *b, const char *fmt, ...) {
    char line[256];
    va_list ap;
    va_start(ap, fmt);
    int n = vsnprintf(line, sizeof line, fmt, ap);
    va_end(ap);
    if (n > 0) buf_append(b, line, (size_t)n);
}

/* Sends "<kind> <id> <len>\n" and the buffer's bytes (a framed reply or event), then frees it. */
static void emit_buffer(const char *kind, const char *id, struct buffer *b) {
    emitf("%s %s %zu\n", kind, id, b->len);
    emit(b->data ? b->data : "", b->len);
    free(b->data);
}

/* Appends up to want bytes of dir/name; returns how many it appended. */
static long append_head(struct buffer *b, const char *dir, const char *name, long offset, long want) {
    char path[4200], chunk[65536];
    long got = 0;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) return 0;
    if (offset > 0 && lseek(fd, offset, SEEK_SET) < 0) {
        close(fd);
        return 0;
    }
    while (got < want) {
        size_t ask = (size_t)(want - got) < sizeof chunk ? (size_t)(want - got) : sizeof chunk;
        ssize_t n = read(fd, chunk, ask);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) break;
        buf_append(b, chunk, (size_t)n);
        got += n;
    }
    close(fd);
    return got;
}

static long file_size(const char *dir, const char *name) {
    char path[4200];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s", dir, name);
    if (lstat(path, &st) < 0 || !S_ISREG(st.st_mode)) return 0;
    return (long)st.st_size;
}

/* The sandbox's count of OOM kills: cgroup v1 memory.oom_control, or v2 memory.events. */
static long oom_kill_count(void) {
    static const char *files[] = {"/sys/fs/cgroup/memory/memory.oom_control", "/sys/fs/cgroup/memory.events"};
    for (size_t i = 0; i < 2; i++) {
        FILE *f = fopen(files[i], "re");
        if (!f) continue;
        char key[64];
        long value;
        while (fscanf(f, "%63s %ld", key, &value) == 2) {
            if (strcmp(key, "oom_kill") == 0) {
                fclose(f);
                return value;
            }
        }
        fclose(f);
    }
    return -1;
}

/* Whether the process whose pid a command recorded still runs. */
static int process_alive(const char *pid_text) {
    pid_t pid = pid_text[0] ? (pid_t)atol(pid_text) : 0;
    return pid > 0 && (kill(pid, 0) == 0 || errno == EPERM);
}

/* The range of a stream punched out to bound its file ("<from> <to>" in <dir>/<stream>_dropped). */
static void read_dropped(const char *dir, const char *stream, long *from, long *to) {
    char path[320], text[64];
    *from = *to = 0;
    snprintf(path, sizeof path, "%s/%s_dropped", dir, stream);
    int fd = open(path, O_RDONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) return;
    ssize_t n = read(fd, text, sizeof text - 1);
    close(fd);
    if (n <= 0) return;
    text[n] = 0;
    if (sscanf(text, "%ld %ld", from, to) != 2 || *from < 0 || *to < *from) *from = *to = 0;
}

/* Keeps a stream file within output_file_max: its first and last half stay, the middle becomes
 * a hole. Punches in steps of PUNCH_STEP while the file grows, exactly once it is final. */
static long bound_output(struct watch *w, int stream, int final) {
    char path[300], dir[256], text[64];
    struct stat st;
    snprintf(path, sizeof path, "%s/%s.%s", OUTPUT_DIR, w->id, STREAMS[stream]);
    if (lstat(path, &st) < 0 || !S_ISREG(st.st_mode)) return -1;
    long size = (long)st.st_size, half = output_file_max / 2;
    if (size <= output_file_max) return size;
    long from = (half + 4095) / 4096 * 4096, to = (size - half) / 4096 * 4096;
    if (to <= from || to <= w->punched_to[stream] || (!final && to - w->punched_to[stream] < PUNCH_STEP)) return size;
    int fd = open(path, O_WRONLY | O_CLOEXEC | O_NOFOLLOW | O_NONBLOCK);
    if (fd < 0) return size;
    long start = w->punched_to[stream] > from ? w->punched_to[stream] : from;
    int ok = fallocate(fd, FALLOC_FL_PUNCH_HOLE | FALLOC_FL_KEEP_SIZE, start, to - start) == 0;
    close(fd);
    if (!ok) return size; /* not supported here (some filesystems, gVisor): the file stays whole */
    w->punched_to[stream] = to;
    snprintf(dir, sizeof dir, "%s/%s", COMMANDS_DIR, w->id);
    snprintf(text, sizeof text, "%s_dropped", STREAMS[stream]);
    write_text(dir, text, "%ld %ld\n", from, to);
    return size;
}

/* Watches a new command's files; when every slot is taken, the ended command that has been
 * quiet longest gives its slot up (bounded one last time first). */
static void watch_output(const char *id) {
    struct watch *slot = NULL;
    for (int i = 0; i < MAX_COMMANDS; i++) {
        struct watch *w = &watches[i];
        if (!w->used) {
            slot = w;
            break;
        }
        if (w->quiet_since_ms && (!slot || w->quiet_since_ms < slot->quiet_since_ms)) slot = w;
    }
    if (!slot) return; /* MAX_COMMANDS commands still running: start_command refuses more anyway */
    if (slot->used)
        for (int s = 0; s < 2; s++) bound_output(slot, s, 1);
    memset(slot, 0, sizeof *slot);
    slot->used = 1;
    snprintf(slot->id, sizeof slot->id, "%s", id);
}

static struct watch *find_watch(const char *id) {
    for (int i = 0; i < MAX_COMMANDS; i++)
        if (watches[i].used && strcmp(watches[i].id, id) == 0) return &watches[i];
    return NULL;
}

static long long next_watch_ms = 0;

static void check_watches(long long now) {
    if (now < next_watch_ms) return;
    next_watch_ms = now + WATCH_INTERVAL_MS;
    for (int i = 0; i < MAX_COMMANDS; i++) {
        struct watch *w = &watches[i];
        if (!w->used) continue;
        int grew = 0;
        for (int s = 0; s < 2; s++) {
            long size = bound_output(w, s, w->quiet_since_ms != 0);
            if (size != w->last_size[s]) grew = 1;
            w->last_size[s] = size;
        }
        if (w->quiet_since_ms && grew) w->quiet_since_ms = now;
        if (w->quiet_since_ms && now - w->quiet_since_ms > WATCH_QUIET_MS) w->used = 0;
    }
}

static int watching(void) {
    for (int i = 0; i < MAX_COMMANDS; i++)
        if (watches[i].used) return 1;
    return 0;
}

/* The MCPSB2 report of a command directory; the same frame as report() in records.py. */
/* From byte offset out_off of stdout and err_off of stderr (a client's cursors); a cursor in a
 * dropped range moves to its end, and a slice stops where a dropped range begins. */
static void build_report(struct buffer *b, const char *id, long cap, long out_off, long err_off) {
    char dir[256], exit_code[16], pid_text[16], started[24], finished[24];
    snprintf(dir, sizeof dir, "%s/%s", COMMANDS_DIR, id);
    int has_exit = file_exists(dir, "exit");
    read_digits(dir, "exit", exit_code, 9);
    read_digits(dir, "pid", pid_text, 9);
    read_digits(dir, "started", started, 16);
    read_digits(dir, "finished", finished, 16);
    int alive = !has_exit && process_alive(pid_text);
    char names[2][64];
    long size[2], off[2] = {out_off, err_off}, n[2], dropped[2][2];
    for (int s = 0; s < 2; s++) {
        snprintf(names[s], sizeof names[s], "%s.%s", id, STREAMS[s]);
        size[s] = file_size(OUTPUT_DIR, names[s]);
        read_dropped(dir, STREAMS[s], &dropped[s][0], &dropped[s][1]);
        if (off[s] >= dropped[s][0] && off[s] < dropped[s][1]) off[s] = dropped[s][1];
        long left = size[s] > off[s] ? size[s] - off[s] : 0;
        n[s] = left < cap ? left : cap;
        if (off[s] < dropped[s][0] && off[s] + n[s] > dropped[s][0]) n[s] = dropped[s][0] - off[s];
    }
    /* The second line: 1 timed out, oom the sandbox's memory limit killed part of it, else 0. */
    const char *flag = file_exists(dir, "timed_out") ? "1" : file_exists(dir, "oom_killed") ? "oom" : "0";
    buf_printf(b, "MCPSB2\n%s\n%s\n%d\n%s\n%s\n%ld\n%ld\n%ld\n%ld\n%ld %ld %ld %ld %ld %ld\n",
               has_exit ? exit_code : "", flag, alive, started, finished, size[0], size[1], n[0], n[1],
               off[0], off[1], dropped[0][0], dropped[0][1], dropped[1][0], dropped[1][1]);
    /* The files may grow while being read: pad or cut to exactly what the header says. */
    for (int s = 0; s < 2; s++) {
        long got = append_head(b, OUTPUT_DIR, names[s], off[s], n[s]);
        for (; got < n[s]; got++) buf_append(b, "", 1);
    }
}

static struct command *find_command(pid_t pid) {
    for (int i = 0; i < MAX_COMMANDS; i++)
        if (commands[i].used && commands[i].pid == pid) return &commands[i];
    return NULL;
}

static int active_commands(void) {
    int n = 0;
    for (int i = 0; i < MAX_COMMANDS; i++) n += commands[i].used;
    return n;
}

/* The environment the server gives every command (an egress proxy, say): NAME=value lines.
 * Called in the child, before exec. */
static void load_env(void) {
    static char buf[16384];
    int fd = open(ENV_PATH, O_RDONLY | O_CLOEXEC);
    if (fd < 0) return;
    ssize_t n = read(fd, buf, sizeof buf - 1);
    close(fd);
    if (n <= 0) return;
    buf[n] = '\0';
    for (char *line = buf, *next; line && *line; line = next) {
        next = strchr(line, '\n');
        if (next) *next++ = '\0';
        if (strchr(line, '=') && line[0] != '=') putenv(line);
    }
}


/* Signals a shell's background job ignores (INT, QUIT) and those the agent handles: back to default. */
static void default_signals(void) {
    static const int sigs[] = {SIGPIPE, SIGCHLD, SIGHUP, SIGINT, SIGQUIT, SIGTERM, SIGUSR1, SIGUSR2, SIGTSTP, SIGTTIN, SIGTTOU};
    sigset_t none;
    sigemptyset(&none);
    sigprocmask(SIG_SETMASK, &none, NULL);
    for (size_t i = 0; i < sizeof sigs / sizeof *sigs; i++) signal(sigs[i], SIG_DFL);
}

enum { WRAP_PLAIN, WRAP_HOLD, WRAP_TTY };
static volatile pid_t wrapped_child = 0;
static const int FORWARDED[] = {SIGINT, SIGTERM, SIGHUP, SIGQUIT, SIGUSR1, SIGUSR2};

static void forward_signal(int sig) {
    if (wrapped_child > 0) kill(-wrapped_child, sig);
}

static void on_sigchld(int sig);

/* Copies what the terminal's command wrote to our stdout (its output file), until nothing is left. */
static void copy_terminal_output(int master) {
    char chunk[65536];
    for (;;) {
        ssize_t n = read(master, chunk, sizeof chunk);
        if (n < 0 && errno == EINTR) continue;
        if (n <= 0) return; /* EAGAIN: all for now; EIO: every process left the terminal */
        if (write_all(STDOUT_FILENO, chunk, (size_t)n) < 0) return;
    }
}

/* Runs argv with its stdin kept open (a FIFO held until <dir>/stdin_closed appears) or on a
 * pseudo-terminal fed from that FIFO; returns the command's exit status as a shell reports it. */
static int wrap(int mode, const char *dir, char *const argv[]) {
    default_signals();
    if (mode == WRAP_PLAIN) {
        execv(argv[0], argv);
        return 127;
    }
    /* Forked from the agent without an exec: let go of what the agent holds (its channel, a FIFO
     * of another command it is writing to, which would otherwise never see end-of-file). */
    long open_max = sysconf(_SC_OPEN_MAX);
    for (int fd = 3; fd < (open_max > 0 && open_max < 65536 ? open_max : 65536); fd++) close(fd);
    char fifo[300];
    snprintf(fifo, sizeof fifo, "%s/stdin", dir);
    /* Opened for reading and writing: never blocks, and the command never sees end-of-file while held. */
    int hold = open(fifo, O_RDWR | O_CLOEXEC | O_NONBLOCK);
    if (hold < 0) return 126;
    fcntl(hold, F_SETPIPE_SZ, 1 << 20); /* up to the system's limit; a smaller pipe works as well */
    int master = -1;
    char slave_name[128] = "";
    if (mode == WRAP_TTY) {
        master = posix_openpt(O_RDWR | O_NOCTTY);
        char *name = master < 0 || grantpt(master) < 0 || unlockpt(master) < 0 ? NULL : ptsname(master);
        if (!name) return 126;
        snprintf(slave_name, sizeof slave_name, "%s", name);
        fcntl(master, F_SETFD, FD_CLOEXEC);
        struct winsize ws = {.ws_row = 40, .ws_col = 120};
        ioctl(master, TIOCSWINSZ, &ws);
    }
    if (pipe2(wake_pipe, O_CLOEXEC | O_NONBLOCK) < 0) return 126;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_flags = SA_RESTART;
    /* hold: the command shares our process group and gets a signal itself; tty: it has a session
     * of its own (the terminal's), so a signal sent to ours is passed on. */
    sa.sa_handler = mode == WRAP_TTY ? forward_signal : SIG_IGN;
    for (size_t i = 0; i < sizeof FORWARDED / sizeof *FORWARDED; i++) sigaction(FORWARDED[i], &sa, NULL);
    sa.sa_handler = on_sigchld;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
    pid_t child = fork();
    if (child < 0) return 126;
    if (child == 0) {
        default_signals();
        if (mode == WRAP_TTY) {
            setsid();
            int slave = open(slave_name, O_RDWR);
            if (slave < 0) _exit(126);
            ioctl(slave, TIOCSCTTY, 0);
            dup2(slave, 0);
            dup2(slave, 1);
            dup2(slave, 2);
            if (slave > 2) close(slave);
            if (!getenv("TERM")) setenv("TERM", "xterm", 1);
        } else {
            int in = open(fifo, O_RDONLY | O_CLOEXEC); /* a writer (hold) exists: does not block */
            if (in < 0) _exit(126);
            dup2(in, 0);
            if (in != 0) close(in);
        }
        execv(argv[0], argv);
        _exit(127);
    }
    wrapped_child = child;
    if (mode == WRAP_TTY) {
        char line[24];
        snprintf(line, sizeof line, "%d\n", (int)child);
        write_text(dir, "pgid", "%d\n", (int)child); /* signals go to the terminal's session */
        fcntl(master, F_SETFL, O_NONBLOCK);
    }
    char input[4096];
    size_t in_len = 0, in_off = 0;
    int status = 0;
    for (;;) {
        struct pollfd fds[3] = {{wake_pipe[0], POLLIN, 0}, {-1, POLLIN, 0}, {-1, POLLIN, 0}};
        if (mode == WRAP_TTY) {
            if (in_len == in_off) fds[1].fd = hold;
            fds[2].fd = master;
            fds[2].events = POLLIN | (in_len > in_off ? POLLOUT : 0);
        }
        poll(fds, 3, mode == WRAP_HOLD ? 50 : 1000);
        char drain[64];
        while (read(wake_pipe[0], drain, sizeof drain) > 0) {}
        pid_t got = waitpid(child, &status, WNOHANG);
        if (mode == WRAP_HOLD) {
            if (hold >= 0 && file_exists(dir, "stdin_closed")) {
                close(hold); /* end-of-file for the command once it has read what is left */
                hold = -1;
            }
        } else {
            if (fds[1].revents & POLLIN) {
                ssize_t n = read(hold, input, sizeof input);
                if (n > 0) in_len = (size_t)n, in_off = 0;
            }
            if (in_len > in_off) {
                ssize_t n = write(master, input + in_off, in_len - in_off);
                if (n > 0) in_off += (size_t)n;
                if (in_off == in_len) in_len = in_off = 0;
            }
            copy_terminal_output(master);
        }
        if (got == child) break;
    }
    return WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
}

/* Sends sig to a command's process group, and to the group its record names (a terminal's). */
static void signal_group(pid_t pid, const char *dir, int sig) {
    char pid_text[16];
    kill(-pid, sig);
    read_digits(dir, "pgid", pid_text, 9);
    pid_t recorded = pid_text[0] ? (pid_t)atol(pid_text) : 0;
    if (recorded > 0 && recorded != pid) kill(-recorded, sig);
}

/* A sandbox keeps the records and output files of its newest KEEP_RECORDS finished commands:
 * a record costs ~20 KB of the 64 MB state tmpfs, so ~3,000 of them would fill it and no
 * command could start. A record of a running command is never removed. The count is the
 * records folder's link count (tmpfs: 2 + its subfolders), so a start pays one stat; the
 * folder is read only when PRUNE_SLACK more than the kept number have built up. */
#define KEEP_RECORDS 1000
#define PRUNE_SLACK 100

struct aged_record {
    char id[24];
    long long started;
};

static int older_first(const void *a, const void *b) {
    long long x = ((const struct aged_record *)a)->started, y = ((const struct aged_record *)b)->started;
    return x < y ? -1 : x > y;
}

static void remove_record(const char *id) {
    static const char *const OUTPUTS[] = {"stdout", "stderr", "stdin"};
    char dir[320], path[700];
    snprintf(dir, sizeof dir, "%s/%s", COMMANDS_DIR, id);
    DIR *d = opendir(dir);
    if (d) {
        struct dirent *e;
        while ((e = readdir(d))) {
            if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
            snprintf(path, sizeof path, "%s/%s", dir, e->d_name);
            unlink(path);
        }
        closedir(d);
    }
    rmdir(dir);
    for (size_t i = 0; i < sizeof OUTPUTS / sizeof *OUTPUTS; i++) {
        snprintf(path, sizeof path, "%s/%s.%s", OUTPUT_DIR, id, OUTPUTS[i]);
        unlink(path);
    }
}

static void prune_records(void) {
    struct stat st;
    if (stat(COMMANDS_DIR, &st) < 0 || st.st_nlink < 2 + KEEP_RECORDS + PRUNE_SLACK) return;
    DIR *d = opendir(COMMANDS_DIR);
    if (!d) return;
    struct aged_record *ended = NULL;
    size_t n = 0, size = 0, records = 0;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!valid_command_id(e->d_name)) continue;
        records++;
        char dir[320], digits[24];
        snprintf(dir, sizeof dir, "%s/%s", COMMANDS_DIR, e->d_name);
        if (!file_exists(dir, "exit")) {
            read_digits(dir, "pid", digits, 9);
            if (!digits[0] || process_alive(digits)) continue; /* starting or running */
        }
        if (n == size) {
            struct aged_record *more = realloc(ended, (size = size ? 2 * size : 256) * sizeof *ended);
            if (!more) break;
            ended = more;
        }
        memcpy(ended[n].id, e->d_name, 21); /* a valid id is 20 characters */
        read_digits(dir, "started", digits, 16);
        ended[n++].started = atoll(digits);
    }
    closedir(d);
    qsort(ended, n, sizeof *ended, older_first);
    for (size_t i = 0; i < n && records > KEEP_RECORDS; i++, records--) remove_record(ended[i].id);
    free(ended);
}

static void start_command(const char *id, long timeout_s, const char *started_ms, long cap,
                          const char *command, size_t len, long flags) {
    char dir[256], path[300];
    if (!valid_command_id(id)) {
        emitf("failed %s bad-id\n", "-");
        return;
    }
    struct command *slot = NULL;
    for (int i = 0; i < MAX_COMMANDS && !slot; i++)
        if (!commands[i].used) slot = &commands[i];
    if (!slot) {
        emitf("failed %s too-many-commands\n", id);
        return;
    }
    snprintf(dir, sizeof dir, "%s/%s", COMMANDS_DIR, id);
    /* The start on the same clock as the end, taken just before the command runs (the
     * server's <started_ms> is older by the time its request took to arrive). */
    (void)started_ms;
    char started_line[40];
    snprintf(started_line, sizeof started_line, "%lld\n", realtime_ms());
    char out_path[300], err_path[300];
    snprintf(out_path, sizeof out_path, "%s/%s.stdout", OUTPUT_DIR, id);
    snprintf(err_path, sizeof err_path, "%s/%s.stderr", OUTPUT_DIR, id);
    int placed = spare_ready && rename(SPARE_DIR, dir) == 0;
    if (spare_ready) {
        rename(SPARE_OUTPUT ".stdout", out_path);
        rename(SPARE_OUTPUT ".stderr", err_path);
    }
    spare_ready = 0;
    mkdirs(OUTPUT_DIR);
    if ((!placed && mkdirs(dir) < 0) || overwrite_text(dir, "command", command, len) < 0 ||
        overwrite_text(dir, "started", started_line, strlen(started_line)) < 0) {
        emitf("failed %s state-unwritable:%s:errno-%d\n", id, COMMANDS_DIR, errno);
        return;
    }
    if (flags & 3) { /* stdin kept open, or a terminal: a FIFO anyone may write (see wrap) */
        char fifo[300];
        snprintf(fifo, sizeof fifo, "%s/stdin", dir);
        if ((mkfifo(fifo, 0600) < 0 && errno != EEXIST) || ((flags & 2) && write_text(dir, "tty", "1\n") < 0)) {
            emitf("failed %s state-unwritable:%s:errno-%d\n", id, COMMANDS_DIR, errno);
            return;
        }
    }
    /* The output files are opened here, not in the child: a sandbox where they cannot be
     * written is the server's failure to report, not a command that exited 126. */
    int out = open(out_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    int err = out < 0 ? -1 : open(err_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0644);
    if (out < 0 || err < 0) {
        emitf("failed %s output-unwritable:%s:errno-%d\n", id, OUTPUT_DIR, errno);
        if (out >= 0) close(out);
        return;
    }
    pid_t pid = fork();
    if (pid < 0) {
        emitf("failed %s fork-%d\n", id, errno);
        close(out);
        close(err);
        return;
    }
    if (pid == 0) {
        /* The command: its own session and process group, output to files, stdin empty, from
         * the file the server wrote, or kept open (wrap). */
        setsid();
        default_signals();
        char stdin_path[300] = "/dev/null";
        if (flags & 4) snprintf(stdin_path, sizeof stdin_path, "%s/%s.stdin", OUTPUT_DIR, id);
        int in = open(stdin_path, O_RDONLY);
        if (in < 0) _exit(126);
        dup2(in, 0);
        dup2(out, 1);
        dup2(err, 2);
        /* Every other descriptor of the agent is close-on-exec. (No close_range(): it
         * crashes gVisor releases of 2022, Debian 12's runsc among them.) */
        if (in > 2) close(in);
        if (out > 2) close(out);
        if (err > 2) close(err);
        load_env();
        snprintf(path, sizeof path, "%s/command", dir);
        char *inline_argv[] = {"/bin/sh", "-c", (char *)command, NULL}, *script_argv[] = {"/bin/sh", path, NULL};
        char **argv = len <= INLINE_COMMAND_MAX ? inline_argv : script_argv;
        if (flags & 3) _exit(wrap((flags & 2) ? WRAP_TTY : WRAP_HOLD, dir, argv));
        execv(argv[0], argv);
        _exit(127);
    }
    close(out);
    close(err);
    char pid_line[24];
    snprintf(pid_line, sizeof pid_line, "%d\n", (int)pid);
    overwrite_text(dir, "pid", pid_line, strlen(pid_line));
    memset(slot, 0, sizeof *slot);
    slot->used = 1;
    snprintf(slot->id, sizeof slot->id, "%s", id);
    slot->pid = pid;
    slot->cap = cap;
    slot->oom_kills_before = oom_kill_count();
    slot->deadline_ms = timeout_s > 0 ? monotonic_ms() + timeout_s * 1000LL : 0;
    watch_output(id);
    emitf("started %s %d\n", id, (int)pid);
    prune_records(); /* after the answer: the next request waits, not this one */
}

static void finish_command(struct command *c, int status) {
    char dir[256];
    snprintf(dir, sizeof dir, "%s/%s", COMMANDS_DIR, c->id);
    int code = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
    char line[32];
    snprintf(line, sizeof line, "%lld\n", realtime_ms()); /* milliseconds, as the start */
    publish_text(dir, "finished", line);
    long oom_kills = oom_kill_count();
    if (code != 0 && c->oom_kills_before >= 0 && oom_kills > c->oom_kills_before)
        write_text(dir, "oom_killed", "%ld\n", oom_kills - c->oom_kills_before);
    struct watch *w = find_watch(c->id);
    if (w) {
        for (int s = 0; s < 2; s++) w->last_size[s] = bound_output(w, s, 1);
        w->quiet_since_ms = monotonic_ms();
    }
    snprintf(line, sizeof line, "%d\n", code);
    publish_text(dir, "exit", line);
    struct buffer report = {0};
    build_report(&report, c->id, c->cap, 0, 0);
    emit_buffer("exit", c->id, &report);
    c->exited = 1;
    c->deadline_ms = 0;
    if (!c->kill_at_ms) c->used = 0; /* else kept until the group gets its SIGKILL */
}

static void reap_children(void) {
    int status;
    pid_t pid;
    while ((pid = waitpid(-1, &status, WNOHANG)) > 0) {
        struct command *c = find_command(pid);
        if (c && !c->exited) finish_command(c, status);
    }
}

static void enforce_deadlines(long long now) {
    for (int i = 0; i < MAX_COMMANDS; i++) {
        struct command *c = &commands[i];
        if (!c->used) continue;
        if (c->deadline_ms && now >= c->deadline_ms) {
            char dir[256];
            snprintf(dir, sizeof dir, "%s/%s", COMMANDS_DIR, c->id);
            write_text(dir, "timed_out", "1\n");
            signal_group(c->pid, dir, SIGTERM);
            c->deadline_ms = 0;
            c->kill_at_ms = now + KILL_GRACE_MS;
        }
        if (c->kill_at_ms && now >= c->kill_at_ms) {
            char dir[256];
            snprintf(dir, sizeof dir, "%s/%s", COMMANDS_DIR, c->id);
            signal_group(c->pid, dir, SIGKILL);
            c->kill_at_ms = 0;
            if (c->exited) c->used = 0;
        }
    }
}

/* Writes to commands' stdin that the command has not taken in yet (its pipe is full): finished
 * when it has, or after STDIN_WAIT_MS with what it took (the server says so). */
#define MAX_PENDING 32
#define STDIN_WAIT_MS 2000
struct pending {
    int used, fd, close_after, tty;
    long sizes[2]; /* the command's stdout and stderr before the write: where its answer starts */
    char req[32], dir[256];
    char *data;
    size_t len, off;
    long long deadline_ms;
};
static struct pending pendings[MAX_PENDING];

static int next_wait_ms(long long now) {
    long long soonest = -1;
    for (int i = 0; i < MAX_COMMANDS; i++) {
        struct command *c = &commands[i];
        if (!c->used) continue;
        long long t = c->deadline_ms ? c->deadline_ms : c->kill_at_ms;
        if (c->deadline_ms && c->kill_at_ms && c->kill_at_ms < t) t = c->kill_at_ms;
        if (t && (soonest < 0 || t < soonest)) soonest = t;
    }
    if (watching() && (soonest < 0 || next_watch_ms < soonest)) soonest = next_watch_ms;
    for (int i = 0; i < MAX_PENDING; i++)
        if (pendings[i].used && (soonest < 0 || pendings[i].deadline_ms < soonest)) soonest = pendings[i].deadline_ms;
    if (soonest < 0) return -1;
    return soonest <= now ? 0 : (int)(soonest - now > 60000 ? 60000 : soonest - now);
}

static void put_file(const char *req, long mode, const char *path, size_t path_len, const char *data,
                     size_t data_len) {
    char target[4097], parent[4097];
    if (path_len == 0 || path_len >= sizeof target || path[0] != '/' || memchr(path, 0, path_len)) {
        emitf("put %s error bad-path\n", req);
        return;
    }
    memcpy(target, path, path_len);
    target[path_len] = 0;
    memcpy(parent, target, path_len + 1);
    char *slash = strrchr(parent, '/');
    if (slash && slash != parent) {
        *slash = 0;
        if (mkdirs(parent) < 0) {
            emitf("put %s error %s\n", req, errno == ENOTDIR ? "parent-not-a-directory" : "cannot-create-parent");
            return;
        }
    }
    struct stat st;
    if (stat(target, &st) == 0 && S_ISDIR(st.st_mode)) {
        emitf("put %s error is-a-directory\n", req);
        return;
    }
    if (write_file(target, data, data_len, (mode_t)(mode & 07777)) < 0) {
        emitf("put %s error write-failed-%d\n", req, errno);
        return;
    }
    emitf("put %s ok\n", req);
}

/* Lines of: id TAB exit TAB timed_out TAB alive TAB started TAB command preview. */
static void list_commands(struct buffer *b) {
    DIR *d = opendir(COMMANDS_DIR);
    if (!d) return;
    struct dirent *e;
    while ((e = readdir(d))) {
        if (!valid_command_id(e->d_name)) continue;
        char dir[320], exit_code[16], pid_text[16], started[24], preview[201];
        snprintf(dir, sizeof dir, "%s/%s", COMMANDS_DIR, e->d_name);
        int has_exit = file_exists(dir, "exit");
        read_digits(dir, "exit", exit_code, 9);
        read_digits(dir, "pid", pid_text, 9);
        read_digits(dir, "started", started, 16);
        int alive = !has_exit && process_alive(pid_text);
        struct buffer text = {0};
        long got = append_head(&text, dir, "command", 0, 200);
        for (long i = 0; i < got; i++) {
            char c = text.data[i];
            preview[i] = (c == '\n' || c == '\t' || c == '\r' || c == 0) ? ' ' : c;
        }
        preview[got] = 0;
        free(text.data);
        buf_printf(b, "%s\t%s\t%d\t%d\t%s\t", e->d_name, has_exit ? exit_code : "", file_exists(dir, "timed_out"),
                   alive, started);
        buf_append(b, preview, (size_t)got);
        buf_append(b, "\n", 1);
    }
    closedir(d);
}

/* The verdict of link_file() in records.py: may this path be shared, and how big is it? */
static void link_file(const char *req, long max_size, const char *file_id, const char *path) {
    struct stat st, lst;
    if (stat(path, &st) < 0) {
        emitf("link %s %s\n", req, lstat(path, &lst) == 0 ? "broken-link" : "missing");
        return;
    }
    if (S_ISDIR(st.st_mode)) { emitf("link %s directory\n", req); return; }
    if (!S_ISREG(st.st_mode)) { emitf("link %s special\n", req); return; }
    if (access(path, R_OK) < 0) { emitf("link %s unreadable\n", req); return; }
    if ((long)st.st_size > max_size) { emitf("link %s too-big %ld\n", req, (long)st.st_size); return; }
    for (const char *p = file_id; *p; p++)
        if (!((*p >= 'A' && *p <= 'Z') || (*p >= 'a' && *p <= 'z') || (*p >= '0' && *p <= '9') || *p == '_' || *p == '-')) {
            emitf("link %s state-unwritable\n", req);
            return;
        }
    char record[300];
    snprintf(record, sizeof record, "%s/%s", LINKS_DIR, file_id);
    if (mkdirs(LINKS_DIR) < 0 || write_file(record, path, strlen(path), 0644) < 0) {
        emitf("link %s state-unwritable\n", req);
        return;
    }
    emitf("link %s file %ld\n", req, (long)st.st_size);
}



static void finish_pending(struct pending *p) {
    if (p->close_after && p->off == p->len) write_text(p->dir, "stdin_closed", "1\n");
    close(p->fd);
    emitf("stdin %s ok %zu %d %ld %ld\n", p->req, p->off - (p->tty && p->close_after && p->off == p->len ? 1 : 0),
          p->tty, p->sizes[0], p->sizes[1]);
    free(p->data);
    p->used = 0;
}

static void progress_pending(struct pending *p, long long now) {
    int broken = 0;
    while (p->off < p->len) {
        ssize_t n = write(p->fd, p->data + p->off, p->len - p->off);
        if (n > 0) {
            p->off += (size_t)n;
        } else if (n < 0 && errno == EINTR) {
            continue;
        } else {
            broken = n < 0 && errno != EAGAIN;
            break;
        }
    }
    if (p->off == p->len || broken || now >= p->deadline_ms) finish_pending(p);
}

static void stdin_request(const char *req, const char *id, int close_after, const char *data, size_t len) {
    char dir[256], fifo[300];
    struct stat st;
    snprintf(dir, sizeof dir, "%s/%s", COMMANDS_DIR, id);
    snprintf(fifo, sizeof fifo, "%s/stdin", dir);
    const char *why = NULL;
    if (!valid_command_id(id) || stat(dir, &st) < 0) why = "no-such-command";
    else if (lstat(fifo, &st) < 0 || !S_ISFIFO(st.st_mode)) why = "not-kept-open";
    else if (file_exists(dir, "stdin_closed")) why = "closed";
    else if (file_exists(dir, "exit")) why = "finished";
    struct pending *p = NULL;
    for (int i = 0; i < MAX_PENDING && !why && !p; i++)
        if (!pendings[i].used) p = &pendings[i];
    if (!why && !p) why = "busy";
    int fd = why ? -1 : open(fifo, O_WRONLY | O_NONBLOCK | O_CLOEXEC);
    /* No reader yet: the command's wrap has not opened the FIFO (it is starting), or it has ended. */
    if (!why && fd < 0) why = errno != ENXIO ? "unwritable" : file_exists(dir, "exit") ? "finished" : "starting";
    if (why) {
        emitf("stdin %s error %s\n", req, why);
        return;
    }
    memset(p, 0, sizeof *p);
    p->tty = file_exists(dir, "tty");
    for (int s = 0; s < 2; s++) {
        char name[64];
        snprintf(name, sizeof name, "%s.%s", id, STREAMS[s]);
        p->sizes[s] = file_size(OUTPUT_DIR, name);
    }
    p->data = malloc(len + 1);
    if (!p->data) {
        close(fd);
        emitf("stdin %s error no-memory\n", req);
        return;
    }
    memcpy(p->data, data, len);
    p->len = len;
    if (close_after && p->tty) p->data[p->len++] = 4; /* end-of-file on a terminal: ^D */
    p->used = 1;
    p->fd = fd;
    p->close_after = close_after;
    snprintf(p->req, sizeof p->req, "%s", req);
    snprintf(p->dir, sizeof p->dir, "%s", dir);
    p->deadline_ms = monotonic_ms() + STDIN_WAIT_MS;
    progress_pending(p, monotonic_ms());
}

static void signal_request(const char *req, const char *id, int sig) {
    char dir[256], pid_text[16];
    struct stat st;
    snprintf(dir, sizeof dir, "%s/%s", COMMANDS_DIR, id);
    if (!valid_command_id(id) || stat(dir, &st) < 0) {
        emitf("signal %s error no-such-command\n", req);
        return;
    }
    read_digits(dir, "pgid", pid_text, 9); /* a terminal's session, else the command's own group */
    if (!pid_text[0]) read_digits(dir, "pid", pid_text, 9);
    pid_t pid = pid_text[0] ? (pid_t)atol(pid_text) : 0;
    if (file_exists(dir, "exit") || pid <= 0 || (kill(-pid, sig) < 0 && kill(pid, sig) < 0)) {
        emitf("signal %s error finished\n", req);
        return;
    }
    emitf("signal %s ok\n", req);
}

/* "ok <size> <n>\n" and n bytes of the file from offset, or "error <why>\n" (read_file in records.py). */
static void read_request(const char *req, long offset, long length, const char *path) {
    struct buffer b = {0};
    struct stat st, lst;
    int fd = -1;
    const char *why = NULL;
    if (path[0] != '/') why = "missing";
    else if (stat(path, &st) < 0) why = lstat(path, &lst) == 0 ? "broken-link" : errno == EACCES ? "unreadable" : "missing";
    else if (S_ISDIR(st.st_mode)) why = "directory";
    else if (!S_ISREG(st.st_mode)) why = "special";
    else if ((fd = open(path, O_RDONLY | O_CLOEXEC | O_NONBLOCK)) < 0 || fstat(fd, &st) < 0) why = "unreadable";
    if (why) {
        buf_printf(&b, "error %s\n", why);
    } else {
        long size = (long)st.st_size, n = size > offset ? size - offset : 0;
        if (n > length) n = length;
        struct buffer data = {0};
        buf_append(&data, "", 0);
        if (n > 0 && data.size < (size_t)n) {
            data.data = realloc(data.data, (size_t)n);
            data.size = data.data ? (size_t)n : 0;
        }
        long got = 0;
        while (data.data && got < n) {
            ssize_t r = pread(fd, data.data + got, (size_t)(n - got), offset + got);
            if (r < 0 && errno == EINTR) continue;
            if (r <= 0) break;
            got += r;
        }
        buf_printf(&b, "ok %ld %ld\n", size, got);
        buf_append(&b, data.data ? data.data : "", (size_t)got);
        free(data.data);
    }
    if (fd >= 0) close(fd);
    emit_buffer("read", req, &b);
}

/* Lines "<mode hex> <size> <mtime s> ./<relative path>" under abs, depth levels deep, up to max. */
static void list_tree(struct buffer *b, const char *abs, const char *rel, int depth, long max, long *count) {
    DIR *d = opendir(abs);
    if (!d) return;
    struct dirent *e;
    while (*count < max && (e = readdir(d))) {
        if (strcmp(e->d_name, ".") == 0 || strcmp(e->d_name, "..") == 0) continue;
        char full[4200], shown[4200];
        struct stat st;
        snprintf(full, sizeof full, "%s%s%s", abs, abs[strlen(abs) - 1] == '/' ? "" : "/", e->d_name);
        snprintf(shown, sizeof shown, "%s/%s", rel, e->d_name);
        if (lstat(full, &st) < 0) continue;
        buf_printf(b, "%x %ld %ld ", (unsigned)st.st_mode, (long)st.st_size, (long)st.st_mtime);
        buf_append(b, shown, strlen(shown));
        buf_append(b, "\n", 1);
        (*count)++;
        if (S_ISDIR(st.st_mode) && depth > 1) list_tree(b, full, shown, depth - 1, max, count);
    }
    closedir(d);
}

static void ls_request(const char *req, int depth, long max, const char *path) {
    struct buffer b = {0};
    struct stat st, lst;
    const char *why = NULL;
    if (path[0] != '/') why = "missing";
    else if (stat(path, &st) < 0) why = lstat(path, &lst) == 0 ? "broken-link" : errno == EACCES ? "unreadable" : "missing";
    else if (!S_ISDIR(st.st_mode)) why = "not-directory";
    else if (access(path, R_OK | X_OK) < 0) why = "unreadable";
    if (why) {
        buf_printf(&b, "error %s\n", why);
    } else {
        long count = 0;
        buf_append(&b, "ok\n", 3);
        list_tree(&b, path, ".", depth, max + 1, &count); /* one more than max: the server sees the cut */
    }
    emit_buffer("ls", req, &b);
}

/* A request's payload as a string of its own (NUL-terminated), or NULL without memory. */
static char *copy_string(const char *data, size_t n) {
    char *copy = malloc(n + 1);
    if (copy) {
        memcpy(copy, data, n);
        copy[n] = 0;
    }
    return copy;
}

/* Handles every complete request in buf; returns how many bytes it consumed. */
static size_t handle_requests(char *buf, size_t len) {
    size_t used = 0;
    for (;;) {
        char *start = buf + used;
        char *nl = memchr(start, '\n', len - used);
        if (!nl) break;
        size_t header_len = (size_t)(nl - start);
        char header[512];
        if (header_len >= sizeof header) header_len = sizeof header - 1;
        memcpy(header, start, header_len);
        header[header_len] = 0;
        char *payload = nl + 1;
        size_t available = len - (size_t)(payload - buf);
        char kind[16] = "", a[64] = "", b[64] = "", c[64] = "", d[64] = "", e[64] = "", f[64] = "";
        sscanf(header, "%15s %63s %63s %63s %63s %63s %63s", kind, a, b, c, d, e, f);
        if (strcmp(kind, "run") == 0) {
            size_t n = (size_t)atol(e);
            if (available < n) break;
            char *command = copy_string(payload, n);
            if (command) start_command(a, atol(b), c, atol(d), command, n, atol(f));
            free(command);
            used = (size_t)(payload - buf) + n;
        } else if (strcmp(kind, "report") == 0) {
            struct buffer report = {0};
            if (valid_command_id(b)) {
                char dir[256];
                struct stat st;
                snprintf(dir, sizeof dir, "%s/%s", COMMANDS_DIR, b);
                if (stat(dir, &st) == 0) build_report(&report, b, atol(c), atol(d), atol(e));
                else buf_append(&report, "MCPSB-NONE\n", 11);
            } else {
                buf_append(&report, "MCPSB-NONE\n", 11);
            }
            emit_buffer("report", a, &report);
            used = (size_t)(payload - buf);
        } else if (strcmp(kind, "put") == 0) {
            size_t path_len = (size_t)atol(c), data_len = (size_t)atol(d);
            if (available < path_len + data_len) break;
            put_file(a, strtol(b, NULL, 8), payload, path_len, payload + path_len, data_len);
            used = (size_t)(payload - buf) + path_len + data_len;
        } else if (strcmp(kind, "list") == 0) {
            struct buffer lines = {0};
            list_commands(&lines);
            emit_buffer("list", a, &lines);
            used = (size_t)(payload - buf);
        } else if (strcmp(kind, "link") == 0) {
            size_t path_len = (size_t)atol(d);
            if (available < path_len) break;
            char *path = copy_string(payload, path_len);
            if (path && (path_len == 0 || path[0] != '/' || strlen(path) != path_len)) emitf("link %s missing\n", a);
            else if (path) link_file(a, atol(b), c, path);
            free(path);
            used = (size_t)(payload - buf) + path_len;
        } else if (strcmp(kind, "stdin") == 0) {
            size_t n = (size_t)atol(d);
            if (available < n) break;
            stdin_request(a, b, atol(c) != 0, payload, n);
            used = (size_t)(payload - buf) + n;
        } else if (strcmp(kind, "signal") == 0) {
            signal_request(a, b, atoi(c));
            used = (size_t)(payload - buf);
        } else if (strcmp(kind, "read") == 0 || strcmp(kind, "ls") == 0) {
            size_t path_len = (size_t)atol(d);
            if (available < path_len) break;
            char *path = copy_string(payload, path_len);
            int whole = path && strlen(path) == path_len;
            if (strcmp(kind, "read") == 0) read_request(a, atol(b), atol(c), whole ? path : "");
            else ls_request(a, atoi(b), atol(c), whole ? path : "");
            free(path);
            used = (size_t)(payload - buf) + path_len;
        } else if (strcmp(kind, "ping") == 0) {
            emitf("pong %s\n", a);
            used = (size_t)(payload - buf);
        } else {
            emitf("error unknown-request\n");
            used = (size_t)(payload - buf);
        }
    }
    return used;
}

static void on_sigchld(int sig) {
    (void)sig;
    int saved = errno;
    if (write(wake_pipe[1], "c", 1) < 0) { /* full pipe: a wake-up is already pending */ }
    errno = saved;
}

static int relay(const char *port_text) {
    long port = atol(port_text);
    if (port < 1 || port > 65535) {
        fprintf(stderr, "relay: no such port %s\n", port_text);
        return 2;
    }
    struct sockaddr_in v4;
    memset(&v4, 0, sizeof v4);
    v4.sin_family = AF_INET;
    v4.sin_port = htons((unsigned short)port);
    v4.sin_addr.s_addr = htonl(INADDR_LOOPBACK);
    int fd = socket(AF_INET, SOCK_STREAM | SOCK_CLOEXEC, 0);
    if (fd < 0 || connect(fd, (struct sockaddr *)&v4, sizeof v4) < 0) {
        int first = errno;
        if (fd >= 0) close(fd);
        struct sockaddr_in6 v6;
        memset(&v6, 0, sizeof v6);
        v6.sin6_family = AF_INET6;
        v6.sin6_port = htons((unsigned short)port);
        v6.sin6_addr = in6addr_loopback;
        fd = socket(AF_INET6, SOCK_STREAM | SOCK_CLOEXEC, 0);
        if (fd < 0 || connect(fd, (struct sockaddr *)&v6, sizeof v6) < 0) {
            fprintf(stderr, "relay: %s\n", strerror(first));
            return 3;
        }
    }
    if (write_all(1, "ok\n", 3) < 0) return 1;
    char buf[65536];
    int in_open = 1, out_open = 1;
    while (out_open) {
        struct pollfd fds[2] = {{in_open ? 0 : -1, POLLIN, 0}, {fd, POLLIN, 0}};
        if (poll(fds, 2, -1) < 0) {
            if (errno == EINTR) continue;
            break;
        }
        if (in_open && (fds[0].revents & (POLLIN | POLLHUP | POLLERR))) {
            ssize_t n = read(0, buf, sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
                in_open = 0;
                shutdown(fd, SHUT_WR);
            } else if (write_all(fd, buf, (size_t)n) < 0) {
                break;
            }
        }
        if (fds[1].revents & (POLLIN | POLLHUP | POLLERR)) {
            ssize_t n = read(fd, buf, sizeof buf);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0 || write_all(1, buf, (size_t)n) < 0) out_open = 0;
        }
    }
    close(fd);
    return 0;
}

int main(int argc, char **argv) {
    if (argc > 4 && strcmp(argv[1], "wrap") == 0) {
        int mode = strcmp(argv[2], "tty") == 0 ? WRAP_TTY : strcmp(argv[2], "hold") == 0 ? WRAP_HOLD : WRAP_PLAIN;
        return wrap(mode, argv[3], argv + 4);
    }
    if (argc > 2 && strcmp(argv[1], "relay") == 0) {
        signal(SIGPIPE, SIG_IGN);
        return relay(argv[2]);
    }
    if (argc > 1 && atol(argv[1]) >= 65536) output_file_max = atol(argv[1]);
    if (argc > 2 && strcmp(argv[2], "fd3") == 0) {
        if (fcntl(3, F_GETFD) < 0 || dup2(3, 0) < 0 || dup2(3, 1) < 0) {
            fprintf(stderr, "sandbox-agent: no channel on descriptor 3 (errno %d)\n", errno);
            return 1;
        }
        close(3);
    }
    signal(SIGPIPE, SIG_IGN);
    signal(SIGHUP, SIG_IGN);
    if (pipe2(wake_pipe, O_CLOEXEC | O_NONBLOCK) < 0) return 1;
    struct sigaction sa;
    memset(&sa, 0, sizeof sa);
    sa.sa_handler = on_sigchld;
    sa.sa_flags = SA_RESTART | SA_NOCLDSTOP;
    sigaction(SIGCHLD, &sa, NULL);
    mkdirs(COMMANDS_DIR);

    size_t size = 1 << 16, len = 0;
    char *buf = malloc(size);
    int input_open = 1;
    prepare_spare();
    emitf("ready %d\n", (int)getpid());
    while (input_open || active_commands() > 0 || watching()) {
        struct pollfd fds[2 + MAX_PENDING] = {{wake_pipe[0], POLLIN, 0}, {input_open ? 0 : -1, POLLIN, 0}};
        for (int i = 0; i < MAX_PENDING; i++)
            fds[2 + i] = (struct pollfd){pendings[i].used ? pendings[i].fd : -1, POLLOUT, 0};
        int timeout = next_wait_ms(monotonic_ms());
        int ready = poll(fds, 2 + MAX_PENDING, timeout);
        if (ready < 0 && errno != EINTR) break;
        for (int i = 0; i < MAX_PENDING; i++)
            if (pendings[i].used) progress_pending(&pendings[i], monotonic_ms());
        if (fds[0].revents & POLLIN) {
            char drain[64];
            while (read(wake_pipe[0], drain, sizeof drain) > 0) {}
        }
        reap_children();
        enforce_deadlines(monotonic_ms());
        check_watches(monotonic_ms());
        if (input_open && (fds[1].revents & (POLLIN | POLLHUP | POLLERR))) {
            if (len == size) {
                if (size >= (size_t)MAX_REQUEST) {
                    emitf("error request-too-large\n");
                    len = 0;
                } else {
                    size *= 2;
                    buf = realloc(buf, size);
                    if (!buf) return 1;
                }
            }
            ssize_t n = read(0, buf + len, size - len);
            if (n < 0 && errno == EINTR) continue;
            if (n <= 0) {
                input_open = 0; /* the channel closed: finish what runs, then leave */
                continue;
            }
            len += (size_t)n;
            size_t used = handle_requests(buf, len);
            memmove(buf, buf + used, len - used);
            len -= used;
            prepare_spare();
        }
    }
    return 0;
}
