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
 * Usage: haven-shim LOG_FILE EXIT_FILE -- RUNC ARGS...
 *   stdout: one line "runc-exit N" once runc has exited (N = runc's status),
 *           then closed, so the caller knows whether the container started.
 *   LOG_FILE: the container's stdout and stderr, appended as they arrive.
 *   EXIT_FILE: written once when the container's init ends:
 *           {"exitCode":N} or {"signal":N}.
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
#include <sys/wait.h>
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

int main(int argc, char **argv)
{
	if (argc < 5 || strcmp(argv[3], "--") != 0) {
		fprintf(stderr, "usage: haven-shim LOG_FILE EXIT_FILE -- RUNC ARGS...\n");
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

	runc_pid = fork();
	if (runc_pid < 0)
		die("fork");
	if (runc_pid == 0) {
		if (dup2(in_pipe[0], 0) < 0 || dup2(out_pipe[1], 1) < 0 || dup2(err_pipe[1], 2) < 0)
			_exit(127);
		execvp(argv[4], &argv[4]);
		_exit(127);
	}
	close(in_pipe[0]);
	close(out_pipe[1]);
	close(err_pipe[1]);

	struct pollfd fds[2] = { { out_pipe[0], POLLIN, 0 }, { err_pipe[0], POLLIN, 0 } };
	int open_fds = 2;
	char buf[65536];

	for (;;) {
		int status;
		pid_t pid;
		/* Once the output pipes are closed, block in waitpid instead of polling. */
		while ((pid = waitpid(-1, &status, open_fds ? WNOHANG : 0)) > 0)
			on_reaped(pid, status);
		if (pid < 0 && errno == ECHILD && open_fds == 0)
			break;
		if (open_fds == 0)
			continue;
		int n = poll(fds, 2, 200);
		if (n < 0 && errno != EINTR)
			die("poll");
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
