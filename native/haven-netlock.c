/*
 * haven-netlock: Haven's network lock, set by one netlink message instead of
 * an nft process.
 *
 * Every container namespace holds one small nftables table, `inet haven`
 * (see lockTableRuleset in src/runtime/network.ts): its traffic is dropped
 * while the interface is in the set @lock and not in @unlock. Locking and
 * unlocking only ever add a set element; both sets are flushed later, off
 * the critical path. `nft` costs ~2.8 ms a call here (loading libnftables,
 * parsing, fetching its cache), and the lock and the unlock sit inside every
 * freeze; this program, one netlink batch, ~0.7 ms (both timed from bash,
 * the fork included).
 *
 * Usage (in the container's network namespace — callers run it there):
 *   haven-netlock lock      add "eth0" to @lock     (traffic dropped)
 *   haven-netlock unlock    add "eth0" to @unlock   (traffic passes)
 *   haven-netlock reset     flush @lock and @unlock  (open, ready to lock)
 *   haven-netlock hold [--idle] [-- COMMAND...]
 *   haven-netlock hold --repeat
 *                           a hold on what clients send while locked: see hold() below
 *   haven-netlock tickle LOCAL_IP:PORT REMOTE_IP:PORT [...]
 *                           a "tickle ACK" per pair (run where LOCAL_IP is): see tickle() below
 * Exit 0 on success; 1 with the kernel's reason on stderr otherwise.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netfilter/nfnetlink_queue.h>
#include <linux/netlink.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <net/if.h>
#include <poll.h>
#include <sched.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <sys/wait.h>
#include <unistd.h>

/* Names shared with lockTableRuleset (src/runtime/network.ts). */
static const char TABLE[] = "haven";
static const char INTERFACE[] = "eth0";
/* The netfilter queue a restore's hold rule feeds (HOLD_QUEUE in src/runtime/network.ts). */
static const uint16_t HOLD_QUEUE = 7;
/* hold's exit status when its input closed without "go": nothing was unlocked. */
static const int CANCELLED = 10;
/* How many packets a hold keeps (the kernel's default queue length). */
static const uint32_t QUEUE_HOLDS = 1024;

struct batch {
	char data[2048];
	size_t len;
	uint32_t seq;
};

static struct nlmsghdr *message(struct batch *b, uint16_t type, uint16_t flags, uint8_t family, uint16_t res_id)
{
	struct nlmsghdr *h = (struct nlmsghdr *)(b->data + b->len);
	struct nfgenmsg *g = NLMSG_DATA(h);
	memset(h, 0, NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(*g)));
	h->nlmsg_type = type;
	h->nlmsg_flags = NLM_F_REQUEST | flags;
	h->nlmsg_seq = ++b->seq;
	h->nlmsg_len = NLMSG_HDRLEN + NLMSG_ALIGN(sizeof(*g));
	g->nfgen_family = family;
	g->version = NFNETLINK_V0;
	g->res_id = htons(res_id);
	return h;
}

/* Closes a message; every attribute below was sized to fit the buffer. */
static void close_message(struct batch *b, struct nlmsghdr *h)
{
	b->len += NLMSG_ALIGN(h->nlmsg_len);
}

static struct nlattr *attribute(struct nlmsghdr *h, uint16_t type, const void *value, size_t len)
{
	struct nlattr *a = (struct nlattr *)((char *)h + NLMSG_ALIGN(h->nlmsg_len));
	a->nla_type = type;
	a->nla_len = NLA_HDRLEN + len;
	memset((char *)a + NLA_HDRLEN, 0, NLA_ALIGN(len));
	if (len)
		memcpy((char *)a + NLA_HDRLEN, value, len);
	h->nlmsg_len = NLMSG_ALIGN(h->nlmsg_len) + NLA_ALIGN(a->nla_len);
	return a;
}

static struct nlattr *nest(struct nlmsghdr *h, uint16_t type)
{
	return attribute(h, type | NLA_F_NESTED, NULL, 0);
}

static void end_nest(struct nlmsghdr *h, struct nlattr *a)
{
	a->nla_len = (char *)h + h->nlmsg_len - (char *)a;
}

/* One set-element message: add INTERFACE to `set`, or (add == 0) flush `set`. */
static void set_message(struct batch *b, const char *set, int add)
{
	uint16_t type = (NFNL_SUBSYS_NFTABLES << 8) | (add ? NFT_MSG_NEWSETELEM : NFT_MSG_DELSETELEM);
	/* NEWSETELEM without NLM_F_EXCL: adding an element already there is no error. */
	struct nlmsghdr *h = message(b, type, NLM_F_ACK | (add ? NLM_F_CREATE : 0), NFPROTO_INET, 0);
	attribute(h, NFTA_SET_ELEM_LIST_TABLE, TABLE, sizeof(TABLE));
	attribute(h, NFTA_SET_ELEM_LIST_SET, set, strlen(set) + 1);
	if (add) {
		/* An ifname key is the name zero-padded to IFNAMSIZ bytes. */
		char key[IFNAMSIZ] = { 0 };
		memcpy(key, INTERFACE, sizeof(INTERFACE));
		struct nlattr *elements = nest(h, NFTA_SET_ELEM_LIST_ELEMENTS);
		struct nlattr *element = nest(h, NFTA_LIST_ELEM);
		struct nlattr *k = nest(h, NFTA_SET_ELEM_KEY);
		attribute(h, NFTA_DATA_VALUE, key, sizeof(key));
		end_nest(h, k);
		end_nest(h, element);
		end_nest(h, elements);
	}
	/* Without an element list, DELSETELEM flushes the whole set. */
	close_message(b, h);
}

/* Sends `b` framed as one nftables transaction and waits for every acknowledgement. */
static int commit(struct batch *b, int acks)
{
	int sk = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
	if (sk < 0) {
		perror("haven-netlock: netlink socket");
		return 1;
	}
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	if (sendto(sk, b->data, b->len, 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0) {
		perror("haven-netlock: send");
		close(sk);
		return 1;
	}
	char reply[8192];
	int status = 0;
	while (acks > 0) {
		ssize_t n = recv(sk, reply, sizeof(reply), 0);
		if (n < 0) {
			if (errno == EINTR)
				continue;
			perror("haven-netlock: receive");
			status = 1;
			break;
		}
		for (struct nlmsghdr *h = (struct nlmsghdr *)reply; NLMSG_OK(h, (size_t)n); h = NLMSG_NEXT(h, n)) {
			if (h->nlmsg_type != NLMSG_ERROR)
				continue;
			const struct nlmsgerr *e = NLMSG_DATA(h);
			if (e->error != 0) {
				fprintf(stderr, "haven-netlock: table inet %s: %s\n", TABLE, strerror(-e->error));
				status = 1;
			}
			acks--;
		}
	}
	close(sk);
	return status;
}

/* Runs one command: a transaction of one or two set messages. */
static int run(const char *command)
{
	struct batch b = { .len = 0, .seq = 0 };
	int acks = 0;
	struct nlmsghdr *begin = message(&b, NFNL_MSG_BATCH_BEGIN, 0, AF_UNSPEC, NFNL_SUBSYS_NFTABLES);
	close_message(&b, begin);
	if (strcmp(command, "lock") == 0) {
		set_message(&b, "lock", 1), acks = 1;
	} else if (strcmp(command, "unlock") == 0) {
		set_message(&b, "unlock", 1), acks = 1;
	} else if (strcmp(command, "reset") == 0) {
		set_message(&b, "lock", 0);
		set_message(&b, "unlock", 0);
		acks = 2;
	} else {
		fprintf(stderr, "usage: haven-netlock lock|unlock|reset\n");
		return 2;
	}
	struct nlmsghdr *end = message(&b, NFNL_MSG_BATCH_END, 0, AF_UNSPEC, NFNL_SUBSYS_NFTABLES);
	close_message(&b, end);
	return commit(&b, acks);
}

/* Set by SIGUSR1 ("hold") and SIGUSR2 ("go"), the signals a checkpoint's chain sends. */
static volatile sig_atomic_t signalled_hold, signalled_go;

static void note_signal(int signo)
{
	if (signo == SIGUSR1)
		signalled_hold = 1;
	else
		signalled_go = 1;
}

/* What the hold queue has counted: the highest packet id (a batch verdict on it covers every packet before) and how many. */
struct held {
	uint32_t last;
	unsigned count;
};

/*
 * Receives from the hold queue (with MSG_DONTWAIT: what is there now):
 * packets are counted into `h`; an acknowledgement sets `*acked`.
 * Returns 1 if something was read, 0 if nothing was there, -1 on an error.
 */
static int queue_receive(int sk, int flags, struct held *h, int *acked)
{
	char buf[65536];
	ssize_t n = recv(sk, buf, sizeof(buf), flags);
	if (n < 0) {
		/* ENOBUFS: notifications were lost, not packets (they stay queued); a later id covers them. */
		if (errno == EAGAIN || errno == EWOULDBLOCK || errno == EINTR || errno == ENOBUFS)
			return 0;
		perror("haven-netlock: hold: receive");
		return -1;
	}
	for (struct nlmsghdr *m = (struct nlmsghdr *)buf; NLMSG_OK(m, (size_t)n); m = NLMSG_NEXT(m, n)) {
		if (m->nlmsg_type == NLMSG_ERROR) {
			const struct nlmsgerr *e = NLMSG_DATA(m);
			if (e->error != 0) {
				fprintf(stderr, "haven-netlock: hold: queue %u: %s\n", HOLD_QUEUE, strerror(-e->error));
				return -1;
			}
			*acked = 1;
			continue;
		}
		if (m->nlmsg_type != ((NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_PACKET))
			continue;
		int len = m->nlmsg_len - NLMSG_LENGTH(sizeof(struct nfgenmsg));
		for (struct nlattr *a = (struct nlattr *)((char *)NLMSG_DATA(m) + NLMSG_ALIGN(sizeof(struct nfgenmsg)));
		     len >= (int)sizeof(*a) && a->nla_len >= sizeof(*a) && a->nla_len <= len;
		     len -= NLA_ALIGN(a->nla_len), a = (struct nlattr *)((char *)a + NLA_ALIGN(a->nla_len))) {
			if ((a->nla_type & NLA_TYPE_MASK) != NFQA_PACKET_HDR)
				continue;
			const struct nfqnl_msg_packet_hdr *p = (const void *)((char *)a + NLA_HDRLEN);
			h->last = ntohl(p->packet_id);
			h->count++;
		}
	}
	return 1;
}

/* Sends `b` to the kernel; with `ack`, waits for its acknowledgement, counting packets meanwhile. */
static int queue_transmit(int sk, struct batch *b, int ack, struct held *h)
{
	struct sockaddr_nl kernel = { .nl_family = AF_NETLINK };
	if (sendto(sk, b->data, b->len, 0, (struct sockaddr *)&kernel, sizeof(kernel)) < 0) {
		perror("haven-netlock: hold: send");
		return 1;
	}
	for (int acked = !ack; !acked;)
		if (queue_receive(sk, 0, h, &acked) < 0)
			return 1;
	return 0;
}

/* Sends one message to the hold queue (see queue_transmit). */
static int queue_send(int sk, uint16_t type, uint16_t attr, const void *value, size_t len, int ack, struct held *h)
{
	struct batch b = { .len = 0, .seq = 0 };
	struct nlmsghdr *m = message(&b, (NFNL_SUBSYS_QUEUE << 8) | type, ack ? NLM_F_ACK : 0, AF_UNSPEC, HOLD_QUEUE);
	attribute(m, attr, value, len);
	close_message(&b, m);
	return queue_transmit(sk, &b, ack, h);
}

/*
 * Sets how many packets the queue keeps: QUEUE_HOLDS while a lock is on;
 * 0 otherwise, with fail-open — a packet that finds the queue full is let
 * through, not dropped. (A queue that copies nothing, NFQNL_COPY_NONE, drops
 * what it is handed: that is why passing packets on goes this way.)
 */
static int queue_capacity(int sk, uint32_t packets, int ack, struct held *h)
{
	struct batch b = { .len = 0, .seq = 0 };
	struct nlmsghdr *m = message(&b, (NFNL_SUBSYS_QUEUE << 8) | NFQNL_MSG_CONFIG, ack ? NLM_F_ACK : 0, AF_UNSPEC, HOLD_QUEUE);
	struct nfqnl_msg_config_params meta = { .copy_range = 0, .copy_mode = NFQNL_COPY_META };
	uint32_t maxlen = htonl(packets), fail_open = htonl(NFQA_CFG_F_FAIL_OPEN);
	attribute(m, NFQA_CFG_PARAMS, &meta, sizeof(meta));
	attribute(m, NFQA_CFG_QUEUE_MAXLEN, &maxlen, sizeof(maxlen));
	attribute(m, NFQA_CFG_MASK, &fail_open, sizeof(fail_open));
	attribute(m, NFQA_CFG_FLAGS, &fail_open, sizeof(fail_open));
	close_message(&b, m);
	return queue_transmit(sk, &b, ack, h);
}

/* Lets every packet up to id `last` through. */
static int queue_release(int sk, struct held *h)
{
	struct nfqnl_msg_verdict_hdr verdict = { .verdict = htonl(NF_ACCEPT), .id = htonl(h->last) };
	return queue_send(sk, NFQNL_MSG_VERDICT_BATCH, NFQA_VERDICT_HDR, &verdict, sizeof(verdict), 0, h);
}

/*
 * The hold. While a container is restored or checkpointed its namespace is
 * locked; what its clients send meanwhile used to be dropped, and a client
 * whose retransmission was dropped waits out its backed-off timer (a
 * capture: the first retransmission 210 ms after the freeze, dropped; the
 * next 430 ms later). A rule before the lock (`iptables -t mangle … -j
 * NFQUEUE --queue-num 7 --queue-bypass`, made with every container network)
 * hands those packets to this program instead, which keeps them in the
 * kernel's queue:
 *
 *   1. binds queue HOLD_QUEUE (metadata only) and prints "holding"; with
 *      --idle (a checkpoint's holder, started before its freeze), keeps
 *      nothing — every packet passes — until "hold" (a line, or SIGUSR1:
 *      the chain sends it once its lock is on);
 *   2. on the line "announce" on stdin, runs COMMAND, not waiting for it (a
 *      restore's announcement: the container's clients are sent here from
 *      then on, to be held);
 *   3. on "go" (a line, or SIGUSR2: the restore or the dump is done):
 *      unlocks as `unlock` does (a checkpoint's chain has already), then lets
 *      every held packet through in one batch verdict — the sockets get them
 *      at once — and prints "unlocked N";
 *   4. on end of input without "go" (not with --idle, whose input is
 *      nothing): exits CANCELLED; closing the queue drops what it held, which
 *      never reaches a socket that was not restored.
 *
 * --repeat (continuous protection: one holder for all of a container's
 * epochs, several a second, instead of a process start each): idle as with
 * --idle, and after each release idle again, waiting for the next SIGUSR1;
 * it prints "unlocked N" per epoch. Its input is a pipe from the agent: at
 * its end (the agent stopped it, or died) it lets through anything it holds
 * and exits 0, so no holder outlives its agent still bound to the queue.
 *
 * Without a listener (before the bind, after the exit) the rule's bypass
 * lets packets on to the lock, which drops them while locked: nothing is
 * lost that the lock would not have dropped anyway.
 */
static int release_held(int sk, struct held *hp, int *ackedp, int unlock);

static int hold(char **command, int idle, int repeat)
{
	int sk = socket(AF_NETLINK, SOCK_RAW | SOCK_CLOEXEC, NETLINK_NETFILTER);
	if (sk < 0) {
		perror("haven-netlock: hold: netlink socket");
		return 1;
	}
	/*
	 * Woken at the unlock, when the thawed container, CRIU's exit and the
	 * agent all want the two cores: a real-time priority lets it release
	 * the held packets at once rather than when the scheduler gets to it
	 * (while it waits, new packets are held too). It runs for microseconds;
	 * best effort.
	 */
	struct sched_param realtime = { .sched_priority = 1 };
	sched_setscheduler(0, SCHED_FIFO, &realtime);
	/* Room for a full queue's notifications (1,024 packets by default, ~200 bytes each). */
	int room = 1 << 20;
	setsockopt(sk, SOL_SOCKET, SO_RCVBUFFORCE, &room, sizeof(room));
	/* Metadata is all a verdict needs (see queue_capacity for what a bound queue copies and keeps). */
	struct nfqnl_msg_config_cmd bind_cmd = { .command = NFQNL_CFG_CMD_BIND };
	struct held h = { 0, 0 };
	if (queue_send(sk, NFQNL_MSG_CONFIG, NFQA_CFG_CMD, &bind_cmd, sizeof(bind_cmd), 1, &h) ||
	    queue_capacity(sk, idle ? 0 : QUEUE_HOLDS, 1, &h))
		return 1;
	/* Signals as well as lines: a checkpoint's chain (bash) sends them with its `kill` builtin, no process start. */
	sigset_t blocked, during_poll;
	sigemptyset(&blocked);
	sigaddset(&blocked, SIGUSR1);
	sigaddset(&blocked, SIGUSR2);
	sigprocmask(SIG_BLOCK, &blocked, &during_poll);
	struct sigaction on_signal = { .sa_handler = note_signal };
	sigaction(SIGUSR1, &on_signal, NULL);
	sigaction(SIGUSR2, &on_signal, NULL);
	printf("holding\n");
	fflush(stdout);
	signal(SIGCHLD, SIG_IGN); /* the announcement is not waited for, and leaves no zombie */
	int announced = 0, acked = 0, input = 1, stop = 0;
	char line[64];
	size_t used = 0;
	for (;;) {
		struct pollfd fds[2] = { { .fd = sk, .events = POLLIN }, { .fd = input ? 0 : -1, .events = POLLIN } };
		int ready = ppoll(fds, 2, NULL, &during_poll);
		if (ready < 0 && errno != EINTR) {
			perror("haven-netlock: hold: poll");
			return 1;
		}
		if (ready > 0 && fds[0].revents & POLLIN && queue_receive(sk, MSG_DONTWAIT, &h, &acked) < 0)
			return 1;
		int go = signalled_go;
		if (ready > 0 && fds[1].revents & (POLLIN | POLLHUP)) {
			ssize_t n = read(0, line + used, sizeof(line) - 1 - used);
			if (n <= 0) {
				/* End of input: a restore's cancel; a checkpoint's holder (--idle) is driven by signals. */
				if (repeat) {
					stop = 1;
					go = 1;
				} else if (!idle && !signalled_hold)
					return CANCELLED;
				input = 0;
			} else {
				used += n;
				line[used] = 0;
				if (strstr(line, "go\n"))
					go = 1;
				if (strstr(line, "hold\n"))
					signalled_hold = 1;
				if (!announced && strstr(line, "announce\n") && command && command[0]) {
					announced = 1;
					if (fork() == 0) {
						struct sched_param normal = { .sched_priority = 0 };
						sched_setscheduler(0, SCHED_OTHER, &normal);
						signal(SIGCHLD, SIG_DFL);
						sigprocmask(SIG_SETMASK, &during_poll, NULL);
						execvp(command[0], command);
						perror("haven-netlock: hold: command");
						_exit(127);
					}
				}
				if (used == sizeof(line) - 1)
					used = 0;
			}
		}
		if (idle && signalled_hold && !stop) {
			/* The lock is on: from now on packets are kept (not waiting for the ack: one dropped meanwhile is what the lock did before). */
			idle = 0;
			if (queue_capacity(sk, QUEUE_HOLDS, 0, &h))
				return 1;
		}
		if (!go)
			continue;
		if (repeat) {
			signalled_hold = signalled_go = 0;
			/* Nothing kept this round (a stop while idle): nothing to unlock or release. */
			if (idle) {
				if (stop)
					break;
				continue;
			}
			/* The chain has unlocked (an unlock now could land after the agent's reset, and undo the next lock). */
			if (release_held(sk, &h, &acked, 0))
				return 1;
			idle = 1;
			h.count = 0;
			if (stop)
				break;
			continue;
		}
		if (release_held(sk, &h, &acked, 1))
			return 1;
		break;
	}
	close(sk);
	return 0;
}

/*
 * The release at "go": unlocks as `unlock` does if asked (a checkpoint's
 * chain has already), stops keeping packets, and lets through every one kept in one
 * batch verdict; prints "unlocked N".
 */
static int release_held(int sk, struct held *hp, int *ackedp, int unlock)
{
	struct held h = *hp;
	int acked = *ackedp;
	if (unlock && run("unlock"))
		return 1;
	/*
	 * The queue stops keeping packets before it is released and closed (new
	 * ones find it full and pass: fail-open), so none can arrive between the
	 * last receive and the close, which would drop it. (A capture showed why
	 * this matters: the released packets draw the client's retransmission
	 * within a millisecond.)
	 */
	if (queue_capacity(sk, 0, 1, &h))
		return 1;
	/* What came in meanwhile, then one verdict for all of it; once more for an enqueue that raced the change. */
	unsigned released = 0;
	for (int round = 0; round < 2; round++) {
		int got;
		while ((got = queue_receive(sk, MSG_DONTWAIT, &h, &acked)) > 0)
			;
		if (got < 0)
			return 1;
		if (h.count > released && queue_release(sk, &h))
			return 1;
		released = h.count;
	}
	printf("unlocked %u\n", h.count);
	fflush(stdout);
	*hp = h;
	*ackedp = acked;
	return 0;
}

/*
 * The Internet checksum of `len` bytes (an even number), starting from
 * `sum`: 16-bit words summed as they lie in memory, so the result is stored
 * as is, whatever the machine's byte order.
 */
static uint16_t checksum(const void *data, size_t len, uint32_t sum)
{
	const uint8_t *p = data;
	for (; len > 1; p += 2, len -= 2) {
		uint16_t word;
		memcpy(&word, p, sizeof(word));
		sum += word;
	}
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

/* "a.b.c.d:port" → address and port, both in network order; -1 if malformed. */
static int parse_endpoint(const char *text, struct in_addr *addr, uint16_t *port)
{
	char host[INET_ADDRSTRLEN];
	const char *colon = strrchr(text, ':');
	char *end;
	long number;
	if (!colon || (size_t)(colon - text) >= sizeof(host))
		return -1;
	memcpy(host, text, colon - text);
	host[colon - text] = 0;
	number = strtol(colon + 1, &end, 10);
	if (*end || colon[1] == 0 || number < 1 || number > 65535 || inet_pton(AF_INET, host, addr) != 1)
		return -1;
	*port = htons((uint16_t)number);
	return 0;
}

/*
 * Tickle ACKs, as clustered file servers send them after taking over an
 * address (CTDB): a host that died without a word leaves its clients'
 * connections open, and a client waiting for a reply sends nothing — it
 * waits for its own time-out, or forever. The new holder of the address
 * knows the connections (the primary lists them in every epoch) but not
 * their sequence numbers, so it sends each client an ACK from the old
 * connection's address and port with sequence and acknowledgement 0. The
 * client answers the out-of-window segment with an ACK of its own, that
 * reaches this host, which holds no such connection and resets it with the
 * exact sequence number the client expects: the client sees a reset at once
 * and reconnects. Exit 0 if every pair was sent; 1 otherwise.
 */
static int tickle(int count, char **pairs)
{
	int sk = socket(AF_INET, SOCK_RAW, IPPROTO_RAW); /* IPPROTO_RAW: the IP header is ours */
	int failed = 0;
	if (sk < 0) {
		perror("haven-netlock tickle: socket");
		return 1;
	}
	for (int i = 0; i + 1 < count; i += 2) {
		struct {
			struct iphdr ip;
			struct tcphdr tcp;
		} packet;
		struct {
			uint32_t source, destination;
			uint8_t zero, protocol;
			uint16_t length;
			struct tcphdr tcp;
		} pseudo;
		struct in_addr local, remote;
		uint16_t local_port, remote_port;
		struct sockaddr_in to = { .sin_family = AF_INET };
		if (parse_endpoint(pairs[i], &local, &local_port) ||
		    parse_endpoint(pairs[i + 1], &remote, &remote_port)) {
			fprintf(stderr, "haven-netlock tickle: not IP:PORT IP:PORT: %s %s\n", pairs[i], pairs[i + 1]);
			failed = 1;
			continue;
		}
		memset(&packet, 0, sizeof(packet));
		packet.ip.version = 4;
		packet.ip.ihl = 5;
		packet.ip.ttl = 64;
		packet.ip.protocol = IPPROTO_TCP;
		packet.ip.tot_len = htons(sizeof(packet)); /* the kernel fills in the id and the checksum */
		packet.ip.saddr = local.s_addr;
		packet.ip.daddr = remote.s_addr;
		packet.tcp.source = local_port;
		packet.tcp.dest = remote_port;
		packet.tcp.doff = 5;
		packet.tcp.ack = 1; /* seq = ack_seq = 0: out of any window */
		packet.tcp.window = htons(1234);
		memset(&pseudo, 0, sizeof(pseudo));
		pseudo.source = local.s_addr;
		pseudo.destination = remote.s_addr;
		pseudo.protocol = IPPROTO_TCP;
		pseudo.length = htons(sizeof(packet.tcp));
		pseudo.tcp = packet.tcp;
		packet.tcp.check = checksum(&pseudo, sizeof(pseudo), 0);
		to.sin_addr = remote;
		if (sendto(sk, &packet, sizeof(packet), 0, (struct sockaddr *)&to, sizeof(to)) < 0) {
			fprintf(stderr, "haven-netlock tickle %s %s: %s\n", pairs[i], pairs[i + 1], strerror(errno));
			failed = 1;
		}
	}
	close(sk);
	return failed;
}

int main(int argc, char **argv)
{
	if (argc >= 4 && argc % 2 == 0 && strcmp(argv[1], "tickle") == 0)
		return tickle(argc - 2, argv + 2);
	if (argc >= 2 && strcmp(argv[1], "hold") == 0) {
		if (argc == 3 && strcmp(argv[2], "--repeat") == 0)
			return hold(NULL, 1, 1);
		int idle = argc >= 3 && strcmp(argv[2], "--idle") == 0;
		if (argc == 2 + idle)
			return hold(NULL, idle, 0);
		if (strcmp(argv[2 + idle], "--") == 0)
			return hold(argv + 3 + idle, idle, 0);
	} else if (argc == 2) {
		return run(argv[1]);
	}
	fprintf(stderr, "usage: haven-netlock lock|unlock|reset|hold [--idle|--repeat] [-- COMMAND...]"
			"|tickle LOCAL_IP:PORT REMOTE_IP:PORT...\n");
	return 2;
}
