/*
 * haven-criu-action: the action script Haven's criu.conf names.
 *
 * CRIU runs its action script at every step of a dump or a restore (the
 * step's name in CRTOOLS_SCRIPT_ACTION), in RPC mode too (as runc drives
 * it), with CRIU's own environment and network namespace. Haven uses one
 * step: at "post-restore" the restored processes and their sockets exist but
 * the sockets are still in repair mode. That is where CRIU lifts its own
 * network lock ("unlock network before disabling repair mode on sockets"),
 * so that the window probe each connection sends when repair mode ends
 * reaches its peer, and the peer retransmits at once instead of on its
 * retransmission timer. CRIU does not run its "network-unlock" step for a
 * namespace it did not create (runc's case), and Haven holds its own lock
 * (see lockTableRuleset in src/runtime/network.ts), so without this the lock
 * lifted only after runc returned and those probes were dropped.
 *
 * What to run comes from the restoring agent: HAVEN_POST_RESTORE_NFT holds
 * one nft command (runc and CRIU run inside the container's namespace, so
 * nft acts there). Without it, and at every other step, this exits 0 at once:
 * inside a dump's freeze it costs one small static exec.
 *
 * It never fails the restore (CRIU aborts on a failing post-restore script):
 * the agent unlocks again after runc returns (an addition to a set:
 * idempotent), so a failure here only costs the early unlock. It reports one.
 */
#define _GNU_SOURCE
#include <errno.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/wait.h>
#include <unistd.h>

int main(void)
{
	const char *action = getenv("CRTOOLS_SCRIPT_ACTION");
	const char *command = getenv("HAVEN_POST_RESTORE_NFT");
	if (!action || !command || !*command || strcmp(action, "post-restore") != 0)
		return 0;

	pid_t child = fork();
	if (child < 0) {
		perror("haven-criu-action: fork");
		return 0;
	}
	if (child == 0) {
		execlp("nft", "nft", command, (char *)NULL);
		perror("haven-criu-action: exec nft");
		_exit(127);
	}
	int status = 0;
	while (waitpid(child, &status, 0) < 0) {
		if (errno != EINTR) {
			perror("haven-criu-action: waitpid");
			return 0;
		}
	}
	if (!WIFEXITED(status) || WEXITSTATUS(status) != 0)
		fprintf(stderr, "haven-criu-action: nft %s failed (status %d)\n", command, status);
	return 0;
}
