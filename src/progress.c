/*
 * The ready progress callback for pool maps: one line on stderr, redrawn in
 * place.
 *
 * A run is the calls of one map. It begins at the first call, when done goes
 * back, when total changes, or after the final line (done == total) was
 * drawn; its first call is the origin of the rate (items per second since
 * then) and so of the ETA. The line is redrawn ("\r", the text, "\033[K" to
 * clear what a longer line left) at most every 100 ms, whatever the runs:
 * maps that run at once from several threads start new runs at every turn
 * and must not flood the terminal. Final lines, with their newline, are
 * always drawn and do not count. isatty(2) is asked only when a line is
 * due, so a call that draws nothing costs a clock read and the mutex.
 *
 * Maps may run from several threads at once: the state is a few statics
 * under a mutex, and a line is formatted in a local buffer and written with
 * one write(2), never through stdio's buffer of stderr, so lines do not
 * interleave. A fork child forgets the parent's run (and a mutex another
 * thread may have held): its own calls start afresh.
 */
#include "mproc.h"

#include "os/os.h"

#include <errno.h>
#include <pthread.h>
#include <stdbool.h>
#include <stdio.h>
#include <sys/ioctl.h>
#include <unistd.h>

#define REDRAW_NS 100000000 /* 100 ms: at most ten lines a second */
#define LABEL_MAX 200       /* chars of the label drawn when the width is unknown */

/* Process-local; every field but mu is guarded by mu. */
static struct {
    pthread_mutex_t mu;
    bool running;      /* a run began and its final line is not drawn yet */
    size_t total;      /* the run's */
    size_t first_done; /* done at the run's first call */
    size_t last_done;  /* done at the latest call */
    int64_t start_ns;  /* CLOCK_MONOTONIC at the run's first call */
    bool drawn;        /* a line that is not final was drawn: drawn_ns is valid */
    int64_t drawn_ns;  /* CLOCK_MONOTONIC when the latest such line was */
} bar = {.mu = PTHREAD_MUTEX_INITIALIZER};

/* "4.5k/s"; "--/s" when not known yet (rate < 0). */
static void fmt_rate(char *b, size_t n, double rate)
{
    static const char unit[] = " kMGTPE";
    int u = 0;
    if (rate < 0) {
        snprintf(b, n, "--/s");
        return;
    }
    while (rate >= 999.95 && u < 6) {
        rate /= 1000;
        u++;
    }
    if (u)
        snprintf(b, n, "%.1f%c/s", rate, unit[u]);
    else
        snprintf(b, n, "%.1f/s", rate);
}

/* "0:03", "1:02:03"; "--:--" when not known (negative, NaN) or past 99 h. */
static void fmt_time(char *b, size_t n, double secs)
{
    if (!(secs >= 0 && secs < 360000)) {
        snprintf(b, n, "--:--");
        return;
    }
    unsigned s = (unsigned)(secs + 0.5);
    if (s >= 3600)
        snprintf(b, n, "%u:%02u:%02u", s / 3600, s / 60 % 60, s % 60);
    else
        snprintf(b, n, "%u:%02u", s / 60, s % 60);
}

/* Retries EINTR and short writes; any other failure loses the line. */
static void write_all(const char *p, size_t n)
{
    while (n > 0) {
        ssize_t w = mp__sys.write(STDERR_FILENO, p, n);
        if (w < 0 && errno == EINTR)
            continue;
        if (w <= 0)
            return;
        p += w;
        n -= (size_t)w;
    }
}

/* Draws the line of the current run (under mu). done <= total. */
static void draw(size_t done, const char *label, int64_t now, bool final)
{
    size_t total = bar.total;
    double secs = (double)(now - bar.start_ns) * 1e-9;
    double rate = secs > 0 ? (double)(done - bar.first_done) / secs : -1;
    unsigned pct = 100;
    if (done < total) { /* floor, never 100 before the end */
        pct = (unsigned)((double)done / (double)total * 100);
        pct = pct > 99 ? 99 : pct;
    }
    char r[32], t[32], stats[128], line[LABEL_MAX + 160];
    fmt_rate(r, sizeof r, rate);
    fmt_time(t, sizeof t, final ? secs : rate > 0 ? (double)(total - done) / rate : -1);
    int n = snprintf(stats, sizeof stats, "%zu/%zu  %u%%  %s  %s %s", done, total, pct, r,
                     final ? "in" : "ETA", t);

    /* The label gets what the terminal's width leaves: a line that wraps
     * could not be redrawn in place. */
    int room = LABEL_MAX;
    struct winsize ws;
    if (ioctl(STDERR_FILENO, TIOCGWINSZ, &ws) == 0 && ws.ws_col > 0 && ws.ws_col - 3 - n < room)
        room = ws.ws_col - 3 - n;
    const char *end = final ? "\033[K\n" : "\033[K";
    int len;
    if (label && *label && room > 0)
        len = snprintf(line, sizeof line, "\r%.*s  %s%s", room, label, stats, end);
    else
        len = snprintf(line, sizeof line, "\r%s%s", stats, end);
    write_all(line, (size_t)len);
}

void mp_progress_bar(size_t done, size_t total, void *arg)
{
    int saved = errno; /* a callback should leave errno alone (isatty sets it) */
    if (done > total)
        done = total;
    bool final = done == total;
    pthread_mutex_lock(&bar.mu);
    int64_t now = mp__now_ns();
    if (!bar.running || done < bar.last_done || total != bar.total) {
        bar.running = true;
        bar.total = total;
        bar.first_done = done;
        bar.start_ns = now;
    }
    bar.last_done = done;
    bool due = final || !bar.drawn || now - bar.drawn_ns >= REDRAW_NS;
    if (final) {
        bar.running = false;
    } else if (due) {
        bar.drawn = true;
        bar.drawn_ns = now;
    }
    if (due && isatty(STDERR_FILENO))
        draw(done, arg, now, final);
    pthread_mutex_unlock(&bar.mu);
    errno = saved;
}

/* The forking thread is the child's only one: a lock another thread held
 * at the fork is free, and the parent's run is not the child's. */
static void atfork_child(void)
{
    bar.mu = (pthread_mutex_t)PTHREAD_MUTEX_INITIALIZER;
    bar.running = false;
    bar.drawn = false;
}

__attribute__((constructor)) static void progress_init(void) { pthread_atfork(NULL, NULL, atfork_child); }
