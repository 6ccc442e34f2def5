/*
 * haven-tcp-nudge: makes restored TCP sockets tell their peers where they
 * stand, at once.
 *
 * Usage (inside the container's network namespace):
 *   haven-tcp-nudge LOCAL_IP LOCAL_PORT REMOTE_IP REMOTE_PORT [...]
 *
 * For each established connection given, it sends the local socket one
 * segment that seems to come from the peer: an ACK whose sequence number is
 * far outside the socket's window. The kernel drops it and answers with a
 * duplicate acknowledgement (RFC 793; Linux's tcp_send_dupack) carrying the
 * socket's current sequence and acknowledgement numbers. Nothing of the
 * connection changes.
 *
 * Why: CRIU unlocks a restored container's network before it takes the
 * sockets out of repair mode, so that the window probe the kernel sends then
 * reaches the peer. Haven's own lock lifts after `runc restore` returns, a
 * few milliseconds after that probe was dropped. Without it, a client whose
 * segments were acknowledged by the server but whose acknowledgement was
 * lost in the freeze waits for one of the two sides' retransmission timers
 * (200 ms and more). This answer is that probe, sent after the unlock. It
 * also is the container's first frame on its new link.
 *
 * The segment goes through a raw socket to a local address, so it never
 * leaves the namespace. IPv4 only, as Haven's container network is.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <netinet/ip.h>
#include <netinet/tcp.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/socket.h>
#include <unistd.h>

static uint16_t checksum(const void *data, size_t len, uint32_t sum)
{
	const uint8_t *bytes = data;
	for (size_t i = 0; i + 1 < len; i += 2)
		sum += (uint32_t)bytes[i] << 8 | bytes[i + 1];
	if (len & 1)
		sum += (uint32_t)bytes[len - 1] << 8;
	while (sum >> 16)
		sum = (sum & 0xffff) + (sum >> 16);
	return (uint16_t)~sum;
}

static int parse_port(const char *text, uint16_t *port)
{
	char *end;
	long value = strtol(text, &end, 10);
	if (*text == '\0' || *end != '\0' || value < 1 || value > 65535)
		return -1;
	*port = (uint16_t)value;
	return 0;
}

/* One out-of-window ACK from remote to local. */
static int nudge(int raw, struct in_addr local, uint16_t local_port, struct in_addr remote, uint16_t remote_port)
{
	struct {
		struct iphdr ip;
		struct tcphdr tcp;
	} packet;
	memset(&packet, 0, sizeof(packet));
	packet.ip.version = 4;
	packet.ip.ihl = 5;
	packet.ip.ttl = 64;
	packet.ip.protocol = IPPROTO_TCP;
	packet.ip.tot_len = htons(sizeof(packet));
	packet.ip.saddr = remote.s_addr;
	packet.ip.daddr = local.s_addr;
	packet.tcp.source = htons(remote_port);
	packet.tcp.dest = htons(local_port);
	/*
	 * Any sequence number outside the receive window draws the duplicate
	 * acknowledgement; a fixed one is outside it unless the window happens
	 * to cover it (a chance of about 1 in 65,000 for a 64 KB window), and
	 * then the ACK field, far behind, draws a challenge ACK instead.
	 */
	packet.tcp.seq = htonl(0x5a5a5a5a);
	packet.tcp.ack_seq = htonl(0x5a5a5a5a);
	packet.tcp.doff = 5;
	packet.tcp.ack = 1;
	packet.tcp.window = htons(1024);

	struct {
		uint32_t saddr, daddr;
		uint8_t zero, protocol;
		uint16_t length;
	} pseudo = { remote.s_addr, local.s_addr, 0, IPPROTO_TCP, htons(sizeof(packet.tcp)) };
	uint32_t sum = 0;
	const uint8_t *p = (const uint8_t *)&pseudo;
	for (size_t i = 0; i < sizeof(pseudo); i += 2)
		sum += (uint32_t)p[i] << 8 | p[i + 1];
	packet.tcp.check = htons(checksum(&packet.tcp, sizeof(packet.tcp), sum));

	struct sockaddr_in to = { .sin_family = AF_INET, .sin_addr = local };
	if (sendto(raw, &packet, sizeof(packet), 0, (struct sockaddr *)&to, sizeof(to)) != (ssize_t)sizeof(packet))
		return -1;
	return 0;
}

int main(int argc, char **argv)
{
	if (argc < 5 || (argc - 1) % 4 != 0) {
		fprintf(stderr, "usage: %s LOCAL_IP LOCAL_PORT REMOTE_IP REMOTE_PORT [...]\n", argv[0]);
		return 2;
	}
	int raw = socket(AF_INET, SOCK_RAW, IPPROTO_RAW);
	if (raw < 0) {
		fprintf(stderr, "haven-tcp-nudge: raw socket: %s\n", strerror(errno));
		return 1;
	}
	int failed = 0;
	for (int i = 1; i + 3 < argc; i += 4) {
		struct in_addr local, remote;
		uint16_t local_port, remote_port;
		if (inet_pton(AF_INET, argv[i], &local) != 1 || parse_port(argv[i + 1], &local_port) ||
		    inet_pton(AF_INET, argv[i + 2], &remote) != 1 || parse_port(argv[i + 3], &remote_port)) {
			fprintf(stderr, "haven-tcp-nudge: bad connection %s:%s %s:%s\n", argv[i], argv[i + 1], argv[i + 2],
				argv[i + 3]);
			failed = 1;
			continue;
		}
		if (nudge(raw, local, local_port, remote, remote_port)) {
			fprintf(stderr, "haven-tcp-nudge: %s:%s: %s\n", argv[i], argv[i + 1], strerror(errno));
			failed = 1;
		}
	}
	close(raw);
	return failed;
}
