/*
 * haven-shim: the parent that outlives the CLI for one container run.
 *
 * Why it exists: runc in detached mode hands its own stdio to the container,
 * and CRIU can only checkpoint a container whose stdio are pipes (a host file
 * held open inside the container breaks the dump). Someone must hold the read
 * ends of those pipes for the container's whole life, write what arrives to
 * the container's log, and learn how the container ended. That is this
 * program, in the spirit of conmon: a few hundred kilobytes, no runtime.
 *
 * It becomes a child subreaper, so when runc (create or restore) exits the
 * container's init is re-parented here and its exit status can be recorded.
 *
 * Usage: haven-shim [--notify SOCKET STATE_FILE] LOG_FILE EXIT_FILE -- RUNC ARGS...
 *   stdout: one line "runc-exit N" once runc has exited (N = runc's status),
 *           then closed, so the caller knows whether the container started.
 *   LOG_FILE: the container's stdout and stderr, appended as they arrive.
 *   EXIT_FILE: written once when the container's init ends:
 *           {"exitCode":N} or {"signal":N}.
 *   --notify: the application watchdog (sd_notify protocol). The shim binds a
 *           Unix datagram socket at SOCKET, which Haven bind-mounts into the
 *           container's NOTIFY_SOCKET directory, and counts the datagrams
 *           carrying WATCHDOG=1 or READY=1 (WATCHDOG=trigger counts as a
 *           failure). STATE_FILE is replaced (write + rename, so a reader
 *           never sees half a line) with one line:
 *             "v1 START_NS LAST_NS COUNT TRIGGERS"
 *           times on CLOCK_MONOTONIC (the agent's clock too), LAST_NS 0 until
 *           the first heartbeat. The shim owns the socket, not the agent,
 *           because the shim outlives agent restarts and Node has no Unix
 *           datagram sockets. The socket lives outside the container: the
 *           application opens its own socket, sends and closes it (as
 *           sd_notify does), so CRIU has nothing external to dump.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <signal.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/prctl.h>
#include <sys/socket.h>
#include <sys/stat.h>
#include <sys/un.h>
#include <sys/wait.h>
#include <time.h>
#include <unistd.h>

static void die(const char *what)
{
	fprintf(stderr, "haven-shim: %s: %s\n", what, strerror(errno));
	exit(127);
}

static void write_all(int fd, const char *buf, ssize_t len)
{
	while (len > 0) {
		ssize_t n = write(fd, buf, (size_t)len);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			return; /* a full disk must not kill the container's shim */
		}
		buf += n;
		len -= n;
	}
}

/*
 * SIGCHLD only interrupts the wait below: the container inherits runc's
 * stdout and stderr, so runc's exit closes no pipe, and without a wake-up
 * the shim would notice it at the next poll timeout — up to 200 ms added to
 * every create and restore. SIGCHLD stays blocked except inside ppoll, so
 * one that arrives between waitpid and ppoll is not lost.
 */
static void on_sigchld(int sig)
{
	(void)sig;
}

static pid_t runc_pid;
static int runc_status = -1;
static int container_done;
static const char *exit_path;

/* Records one reaped child: runc's status goes to stdout, the container's to EXIT_FILE. */
static void on_reaped(pid_t pid, int status)
{
	if (pid == runc_pid) {
		runc_status = WIFEXITED(status) ? WEXITSTATUS(status) : 128 + WTERMSIG(status);
		dprintf(1, "runc-exit %d\n", runc_status);
		close(1);
		if (runc_status != 0)
			container_done = 1; /* runc failed: nothing was started */
		return;
	}
	if (container_done)
		return; /* a grandchild of the container, re-parented here */
	int fd = open(exit_path, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	if (fd >= 0) {
		if (WIFEXITED(status))
			dprintf(fd, "{\"exitCode\":%d}\n", WEXITSTATUS(status));
		else
			dprintf(fd, "{\"signal\":%d}\n", WTERMSIG(status));
		close(fd);
	}
	container_done = 1;
}

/* --- the application watchdog (--notify) -------------------------------- */

static const char *state_path;
static unsigned long long start_ns, last_ns, heartbeats, triggers, written_ns;
static int state_dirty;

static unsigned long long monotonic_ns(void)
{
	struct timespec ts;
	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (unsigned long long)ts.tv_sec * 1000000000ULL + (unsigned long long)ts.tv_nsec;
}

/* Replaces STATE_FILE; at most every 20 ms, so a flood of datagrams costs no disk churn. */
static void write_state(int force)
{
	unsigned long long now = monotonic_ns();
	if (!force && now - written_ns < 20000000ULL)
		return;
	char tmp[4096], line[160];
	if (snprintf(tmp, sizeof(tmp), "%s.tmp", state_path) >= (int)sizeof(tmp))
		return;
	int len = snprintf(line, sizeof(line), "v1 %llu %llu %llu %llu\n", start_ns, last_ns, heartbeats, triggers);
	int fd = open(tmp, O_WRONLY | O_CREAT | O_TRUNC | O_CLOEXEC, 0640);
	if (fd < 0)
		return; /* the agent then sees an old heartbeat: a false alarm at worst, never a false "alive" */
	write_all(fd, line, len);
	close(fd);
	if (rename(tmp, state_path) == 0) {
		written_ns = now;
		state_dirty = 0;
	}
}

/* Binds the notify socket (replacing a stale one left by an earlier shim of this container). */
static int bind_notify(const char *path)
{
	struct sockaddr_un addr = { .sun_family = AF_UNIX };
	if (strlen(path) >= sizeof(addr.sun_path)) {
		errno = ENAMETOOLONG;
		die("notify socket path");
	}
	strcpy(addr.sun_path, path);
	int fd = socket(AF_UNIX, SOCK_DGRAM | SOCK_CLOEXEC | SOCK_NONBLOCK, 0);
	if (fd < 0)
		die("notify socket");
	unlink(path);
	if (bind(fd, (struct sockaddr *)&addr, sizeof(addr)) < 0)
		die("bind notify socket");
	/* The application may run as any user inside the container; only it sees this directory. */
	chmod(path, 0666);
	return fd;
}

/* Reads every queued datagram; each may hold several newline-separated assignments. */
static void drain_notify(int fd)
{
	char msg[4097];
	for (;;) {
		ssize_t got = recv(fd, msg, sizeof(msg) - 1, 0);
		if (got < 0)
			return; /* EAGAIN: drained */
		msg[got] = '\0';
		int beat = 0;
		for (char *line = strtok(msg, "\n"); line; line = strtok(NULL, "\n")) {
			if (strcmp(line, "WATCHDOG=1") == 0 || strcmp(line, "READY=1") == 0)
				beat = 1;
			else if (strcmp(line, "WATCHDOG=trigger") == 0)
				triggers++;
		}
		if (beat) {
			last_ns = monotonic_ns();
			heartbeats++;
		}
		state_dirty = 1;
	}
}

int main(int argc, char **argv)
{
	int notify_fd = -1;
	if (argc > 3 && strcmp(argv[1], "--notify") == 0) {
		notify_fd = bind_notify(argv[2]);
		state_path = argv[3];
		start_ns = monotonic_ns();
		write_state(1);
		argv += 3;
		argc -= 3;
	}
	if (argc < 5 || strcmp(argv[3], "--") != 0) {
		fprintf(stderr, "usage: haven-shim [--notify SOCKET STATE_FILE] LOG_FILE EXIT_FILE -- RUNC ARGS...\n");
		return 2;
	}
	const char *log_path = argv[1];
	exit_path = argv[2];

	if (prctl(PR_SET_CHILD_SUBREAPER, 1) < 0)
		die("prctl(PR_SET_CHILD_SUBREAPER)");

	int log_fd = open(log_path, O_WRONLY | O_CREAT | O_APPEND | O_CLOEXEC, 0640);
	if (log_fd < 0)
		die("open log");

	/* stdin: a pipe nobody writes to, so the container never reads a host file. */
	int in_pipe[2], out_pipe[2], err_pipe[2];
	if (pipe2(in_pipe, O_CLOEXEC) || pipe2(out_pipe, O_CLOEXEC) || pipe2(err_pipe, O_CLOEXEC))
		die("pipe");

	sigset_t chld, waiting;
	sigemptyset(&chld);
	sigaddset(&chld, SIGCHLD);
	struct sigaction sa = { .sa_handler = on_sigchld };
	sigemptyset(&sa.sa_mask);
	if (sigaction(SIGCHLD, &sa, NULL) < 0 || sigprocmask(SIG_BLOCK, &chld, &waiting) < 0)
		die("SIGCHLD");
	sigdelset(&waiting, SIGCHLD);

	runc_pid = fork();
	if (runc_pid < 0)
		die("fork");
	if (runc_pid == 0) {
		/* runc gets the signal mask the shim was started with (the handler resets on exec). */
		sigprocmask(SIG_UNBLOCK, &chld, NULL);
		if (dup2(in_pipe[0], 0) < 0 || dup2(out_pipe[1], 1) < 0 || dup2(err_pipe[1], 2) < 0)
			_exit(127);
		execvp(argv[4], &argv[4]);
		_exit(127);
	}
	close(in_pipe[0]);
	close(out_pipe[1]);
	close(err_pipe[1]);

	struct pollfd fds[3] = { { out_pipe[0], POLLIN, 0 }, { err_pipe[0], POLLIN, 0 }, { notify_fd, POLLIN, 0 } };
	int open_fds = 2;
	char buf[65536];

	for (;;) {
		int status;
		pid_t pid;
		/* Once nothing is left to read, block in waitpid instead of polling. */
		int busy = open_fds > 0 || notify_fd >= 0;
		while ((pid = waitpid(-1, &status, busy ? WNOHANG : 0)) > 0)
			on_reaped(pid, status);
		if (pid < 0 && errno == ECHILD && !busy)
			break;
		if (container_done && notify_fd >= 0) {
			/* Not unlinked: a restore's new shim may already have bound the same path. */
			close(notify_fd);
			notify_fd = fds[2].fd = -1;
			if (state_dirty)
				write_state(1);
			continue;
		}
		if (!busy)
			continue;
		struct timespec timeout = { 0, (state_dirty ? 20 : 200) * 1000000L };
		if (ppoll(fds, 3, &timeout, &waiting) < 0) {
			if (errno != EINTR)
				die("poll");
			continue; /* a child ended: reap it first */
		}
		if (notify_fd >= 0 && (fds[2].revents & POLLIN))
			drain_notify(notify_fd);
		if (state_dirty)
			write_state(0);
		for (int i = 0; i < 2; i++) {
			if (fds[i].fd < 0 || !(fds[i].revents & (POLLIN | POLLHUP | POLLERR)))
				continue;
			ssize_t got = read(fds[i].fd, buf, sizeof(buf));
			if (got > 0) {
				write_all(log_fd, buf, got);
			} else if (got == 0 || (errno != EINTR && errno != EAGAIN)) {
				close(fds[i].fd);
				fds[i].fd = -1;
				open_fds--;
			}
		}
	}
	return 0;
}
