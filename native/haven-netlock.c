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
 * Exit 0 on success; 1 with the kernel's reason on stderr otherwise.
 */
#define _GNU_SOURCE
#include <arpa/inet.h>
#include <errno.h>
#include <linux/netfilter.h>
#include <linux/netfilter/nf_tables.h>
#include <linux/netfilter/nfnetlink.h>
#include <linux/netlink.h>
#include <net/if.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

/* Names shared with lockTableRuleset (src/runtime/network.ts). */
static const char TABLE[] = "haven";
static const char INTERFACE[] = "eth0";

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

int main(int argc, char **argv)
{
	if (argc == 2)
		return run(argv[1]);
	fprintf(stderr, "usage: haven-netlock lock|unlock|reset\n");
	return 2;
}
