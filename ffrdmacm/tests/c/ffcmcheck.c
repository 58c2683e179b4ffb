/* ffcmcheck: what rping and perftest do not exercise in an rdma_cm library,
 * checked in one process (a listener and a client on two event channels,
 * one thread): a non-blocking channel, private data both ways, a
 * rejection with its data and reason, a SEND between the accepted queue
 * pairs (bytes checked), rdma_init_qp_attr, one DISCONNECTED per side, pointers that are not
 * ids or events, and a listener destroyed under a pending request.
 * Prints "OK ..." per check and "OK done"; exits 1 at the first failure.
 * `ffcmcheck gone`: the router going away and coming back (see gone());
 * `ffcmcheck wr`: rdma_create_qp_ex with ibv_wr_* operations (see wr()).
 * Built by ffrdmacm/tests/rdmacm.rs against Debian's headers. */
#include <arpa/inet.h>
#include <errno.h>
#include <fcntl.h>
#include <poll.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <time.h>
#include <rdma/rdma_cma.h>

#define FAIL(...) do { printf("FAIL "); printf(__VA_ARGS__); printf("\n"); exit(1); } while (0)

/* The next event on ch within ms (NULL: none). */
static struct rdma_cm_event *next(struct rdma_event_channel *ch, int ms)
{
	struct pollfd p = { .fd = ch->fd, .events = POLLIN };
	struct rdma_cm_event *e;
	if (poll(&p, 1, ms) <= 0)
		return NULL;
	if (rdma_get_cm_event(ch, &e))
		FAIL("rdma_get_cm_event: %s", strerror(errno));
	return e;
}

static struct rdma_cm_event *expect(struct rdma_event_channel *ch, enum rdma_cm_event_type t)
{
	struct rdma_cm_event *e = next(ch, 10000);
	if (!e)
		FAIL("no %s within 10 s", rdma_event_str(t));
	if (e->event != t)
		FAIL("%s (status %d) where %s was expected", rdma_event_str(e->event), e->status, rdma_event_str(t));
	return e;
}

static void ack(struct rdma_cm_event *e)
{
	if (rdma_ack_cm_event(e))
		FAIL("rdma_ack_cm_event: %s", strerror(errno));
}

static int has(const struct rdma_conn_param *c, const char *s)
{
	return c->private_data && c->private_data_len >= strlen(s) && !memcmp(c->private_data, s, strlen(s));
}

static struct ibv_pd *pd;
static struct ibv_cq *cq;
/* `ffcmcheck wr`: queue pairs made by rdma_create_qp_ex with ibv_wr_*
 * operations, the SEND posted with them. */
static int use_wr;

static void make_qp(struct rdma_cm_id *id)
{
	struct ibv_qp_init_attr a = { .send_cq = cq, .recv_cq = cq, .qp_type = IBV_QPT_RC,
				      .cap = { .max_send_wr = 4, .max_recv_wr = 4, .max_send_sge = 1, .max_recv_sge = 1 } };
	if (!pd) {
		pd = ibv_alloc_pd(id->verbs);
		cq = ibv_create_cq(id->verbs, 16, NULL, NULL, 0);
		if (!pd || !cq)
			FAIL("pd/cq: %s", strerror(errno));
		a.send_cq = a.recv_cq = cq;
	}
	if (use_wr) {
		struct ibv_qp_init_attr_ex x = { .send_cq = cq, .recv_cq = cq, .qp_type = IBV_QPT_RC, .cap = a.cap,
						 .comp_mask = IBV_QP_INIT_ATTR_PD | IBV_QP_INIT_ATTR_SEND_OPS_FLAGS, .pd = pd,
						 .send_ops_flags = IBV_QP_EX_WITH_SEND | IBV_QP_EX_WITH_BIND_MW };
		errno = 0;
		if (!rdma_create_qp_ex(id, &x) || errno != EOPNOTSUPP || id->qp)
			FAIL("rdma_create_qp_ex with BIND_MW: not EOPNOTSUPP (errno %d)", errno);
		x.send_ops_flags = IBV_QP_EX_WITH_SEND | IBV_QP_EX_WITH_RDMA_WRITE;
		if (rdma_create_qp_ex(id, &x))
			FAIL("rdma_create_qp_ex: %s", strerror(errno));
	} else if (rdma_create_qp(id, pd, &a))
		FAIL("rdma_create_qp: %s", strerror(errno));
	if (id->qp->state != IBV_QPS_INIT)
		FAIL("a new queue pair is in state %d, not INIT", id->qp->state);
}

/* A client id that connected (or tried to) to port with private data. */
static struct rdma_cm_id *dial(struct rdma_event_channel *ch, int port, const char *data)
{
	struct rdma_cm_id *id;
	struct sockaddr_in dst = { .sin_family = AF_INET, .sin_port = htons(port) };
	struct rdma_conn_param p = { .private_data = data, .private_data_len = strlen(data) + 1,
				     .responder_resources = 1, .initiator_depth = 1, .retry_count = 7, .rnr_retry_count = 7 };
	inet_pton(AF_INET, "127.0.0.1", &dst.sin_addr);
	if (rdma_create_id(ch, &id, NULL, RDMA_PS_TCP))
		FAIL("rdma_create_id: %s", strerror(errno));
	if (rdma_resolve_addr(id, NULL, (struct sockaddr *)&dst, 2000))
		FAIL("rdma_resolve_addr: %s", strerror(errno));
	ack(expect(ch, RDMA_CM_EVENT_ADDR_RESOLVED));
	if (rdma_resolve_route(id, 2000))
		FAIL("rdma_resolve_route: %s", strerror(errno));
	ack(expect(ch, RDMA_CM_EVENT_ROUTE_RESOLVED));
	make_qp(id);
	if (rdma_connect(id, &p))
		FAIL("rdma_connect: %s", strerror(errno));
	return id;
}

/* Accepts sid (a request from cid) with a queue pair and private data,
 * waits for ESTABLISHED on both sides, then SENDs 4096 bytes from cid to
 * sid and checks them. */
static void send_checked(struct rdma_event_channel *sch, struct rdma_event_channel *cch, struct rdma_cm_id *cid, struct rdma_cm_id *sid)
{
	static char buf[4096], out[4096];
	struct rdma_cm_event *e;
	struct ibv_mr *mr, *omr;
	struct ibv_wc wc;
	int i, n;

	make_qp(sid);
	mr = ibv_reg_mr(pd, buf, sizeof buf, IBV_ACCESS_LOCAL_WRITE);
	omr = ibv_reg_mr(pd, out, sizeof out, 0);
	{
		struct ibv_sge s = { .addr = (uintptr_t)buf, .length = sizeof buf, .lkey = mr->lkey };
		struct ibv_recv_wr w = { .wr_id = 1, .sg_list = &s, .num_sge = 1 }, *bad;
		if (ibv_post_recv(sid->qp, &w, &bad))
			FAIL("ibv_post_recv");
	}
	{
		struct rdma_conn_param p = { .private_data = "welcome", .private_data_len = 8, .responder_resources = 1, .initiator_depth = 1 };
		if (rdma_accept(sid, &p))
			FAIL("rdma_accept: %s", strerror(errno));
	}
	e = expect(cch, RDMA_CM_EVENT_ESTABLISHED);
	if (!has(&e->param.conn, "welcome"))
		FAIL("established without the acceptor's private data");
	ack(e);
	ack(expect(sch, RDMA_CM_EVENT_ESTABLISHED));
	if (cid->qp->state != IBV_QPS_RTS || sid->qp->state != IBV_QPS_RTS)
		FAIL("connected queue pairs in states %d and %d, not RTS", cid->qp->state, sid->qp->state);
	for (i = 0; i < (int)sizeof out; i++)
		out[i] = (char)(i * 7 + 3);
	if (use_wr) {
		struct ibv_qp_ex *x = ibv_qp_to_qp_ex(cid->qp);
		int rc;
		ibv_wr_start(x);
		x->wr_id = 2;
		x->wr_flags = IBV_SEND_SIGNALED;
		ibv_wr_send(x);
		ibv_wr_set_sge(x, omr->lkey, (uintptr_t)out, sizeof out);
		if ((rc = ibv_wr_complete(x)))
			FAIL("ibv_wr_complete: %s", strerror(rc));
	} else {
		struct ibv_sge s = { .addr = (uintptr_t)out, .length = sizeof out, .lkey = omr->lkey };
		struct ibv_send_wr w = { .wr_id = 2, .sg_list = &s, .num_sge = 1, .opcode = IBV_WR_SEND, .send_flags = IBV_SEND_SIGNALED }, *bad;
		if (ibv_post_send(cid->qp, &w, &bad))
			FAIL("ibv_post_send");
	}
	for (n = 0, i = 0; n < 2 && i < 1000000; i++) {
		int k = ibv_poll_cq(cq, 1, &wc);
		if (k < 0 || (k == 1 && wc.status != IBV_WC_SUCCESS))
			FAIL("completion status %d", k < 0 ? k : (int)wc.status);
		n += k;
	}
	if (n < 2 || memcmp(buf, out, sizeof out))
		FAIL("the SEND: %d completions, bytes %s", n, memcmp(buf, out, sizeof out) ? "differ" : "equal");
	ibv_dereg_mr(mr);
	ibv_dereg_mr(omr);
}

/* A listener on 127.0.0.1 (a free port) and a client connected to it:
 * ids *lid, *cid and the accepted *sid; 4096 bytes sent and checked. */
static void pair(struct rdma_event_channel *sch, struct rdma_event_channel *cch, struct rdma_cm_id **lid, struct rdma_cm_id **cid,
		 struct rdma_cm_id **sid)
{
	struct sockaddr_in any = { .sin_family = AF_INET };
	struct rdma_cm_event *e;

	inet_pton(AF_INET, "127.0.0.1", &any.sin_addr);
	if (rdma_create_id(sch, lid, NULL, RDMA_PS_TCP) || rdma_bind_addr(*lid, (struct sockaddr *)&any) || rdma_listen(*lid, 4))
		FAIL("listen: %s", strerror(errno));
	*cid = dial(cch, ntohs(rdma_get_src_port(*lid)), "hello");
	e = expect(sch, RDMA_CM_EVENT_CONNECT_REQUEST);
	*sid = e->id;
	ack(e);
	send_checked(sch, cch, *cid, *sid);
}

/* ffcmcheck gone: what an rdma_cm program sees when its router goes away
 * and comes back. A listener and a connected pair, then "READY" (the test
 * kills the router): each of the three ids must get one
 * RDMA_CM_EVENT_DEVICE_REMOVAL, and nothing else, within 20 s; they are
 * destroyed with their queue pairs, CQ and PD. Then "WAITING" and a line
 * on stdin (the router is back): a new listener and pair, on ff0 opened
 * anew (another context), 4096 bytes sent and checked. */
static int gone(void)
{
	struct rdma_event_channel *sch = rdma_create_event_channel(), *cch = rdma_create_event_channel();
	struct rdma_cm_id *ids[3];
	const char *names[3] = { "listener", "server", "client" };
	struct ibv_context *old;
	struct rdma_cm_event *e;
	int seen[3] = { 0 }, got = 0, i;
	char line[64];
	struct timespec t0, t1;

	setvbuf(stdout, NULL, _IONBF, 0);
	if (!sch || !cch)
		FAIL("rdma_create_event_channel: %s", strerror(errno));
	pair(sch, cch, &ids[0], &ids[2], &ids[1]);
	old = ids[2]->verbs;
	clock_gettime(CLOCK_MONOTONIC, &t0);
	printf("READY\n");
	while (got < 3) {
		struct pollfd p[2] = { { .fd = sch->fd, .events = POLLIN }, { .fd = cch->fd, .events = POLLIN } };
		if (poll(p, 2, 20000) <= 0)
			FAIL("%d of 3 DEVICE_REMOVAL events within 20 s", got);
		for (int k = 0; k < 2; k++) {
			if (!p[k].revents)
				continue;
			if (rdma_get_cm_event(k ? cch : sch, &e))
				FAIL("rdma_get_cm_event: %s", strerror(errno));
			for (i = 0; i < 3 && e->id != ids[i]; i++)
				;
			if (e->event != RDMA_CM_EVENT_DEVICE_REMOVAL || i == 3 || seen[i]++)
				FAIL("%s on %s", rdma_event_str(e->event), i < 3 ? names[i] : "an id not ours");
			if (!got++) {
				clock_gettime(CLOCK_MONOTONIC, &t1);
				printf("first DEVICE_REMOVAL %.0f ms after READY\n", (t1.tv_sec - t0.tv_sec) * 1e3 + (t1.tv_nsec - t0.tv_nsec) / 1e6);
			}
			ack(e);
		}
	}
	if ((e = next(cch, 1000)) || (e = next(sch, 1000)))
		FAIL("an event after DEVICE_REMOVAL: %s", rdma_event_str(e->event));
	printf("OK removed: listener, server, client, one DEVICE_REMOVAL each\n");
	for (i = 1; i < 3; i++)
		rdma_destroy_qp(ids[i]);
	for (i = 0; i < 3; i++)
		if (rdma_destroy_id(ids[i]))
			FAIL("rdma_destroy_id of the %s: %s", names[i], strerror(errno));
	if (ibv_destroy_cq(cq) || ibv_dealloc_pd(pd))
		FAIL("destroying the CQ and PD of the removed device");
	pd = NULL;
	cq = NULL;

	printf("WAITING\n");
	if (!fgets(line, sizeof line, stdin))
		FAIL("no line on stdin");
	pair(sch, cch, &ids[0], &ids[2], &ids[1]);
	if (ids[2]->verbs == old || ids[1]->verbs != ids[2]->verbs)
		FAIL("ff0 was not opened anew: old %p, client %p, server %p", (void *)old, (void *)ids[2]->verbs, (void *)ids[1]->verbs);
	printf("OK attached anew: a new context, 4096 bytes sent and checked\n");
	if (rdma_disconnect(ids[2]))
		FAIL("rdma_disconnect: %s", strerror(errno));
	ack(expect(cch, RDMA_CM_EVENT_DISCONNECTED));
	ack(expect(sch, RDMA_CM_EVENT_DISCONNECTED));
	for (i = 1; i < 3; i++)
		rdma_destroy_qp(ids[i]);
	for (i = 0; i < 3; i++)
		rdma_destroy_id(ids[i]);
	rdma_destroy_event_channel(sch);
	rdma_destroy_event_channel(cch);
	printf("OK done\n");
	return 0;
}

/* ffcmcheck wr: rdma_create_qp_ex with ibv_wr_* operations refuses one
 * the device does not do (EOPNOTSUPP, no queue pair) and makes one with
 * SEND and WRITE; a pair of such queue pairs connects and 4096 bytes
 * SENT with ibv_wr_* arrive intact; one DISCONNECTED per side. */
static int wr(void)
{
	struct rdma_event_channel *sch = rdma_create_event_channel(), *cch = rdma_create_event_channel();
	struct rdma_cm_id *lid, *cid, *sid;

	setvbuf(stdout, NULL, _IONBF, 0);
	if (!sch || !cch)
		FAIL("rdma_create_event_channel: %s", strerror(errno));
	use_wr = 1;
	pair(sch, cch, &lid, &cid, &sid);
	printf("OK rdma_create_qp_ex: ibv_wr_* operations, one refused (EOPNOTSUPP); 4096 bytes sent with ibv_wr_* and checked\n");
	if (rdma_disconnect(cid))
		FAIL("rdma_disconnect: %s", strerror(errno));
	ack(expect(cch, RDMA_CM_EVENT_DISCONNECTED));
	ack(expect(sch, RDMA_CM_EVENT_DISCONNECTED));
	rdma_destroy_qp(cid);
	rdma_destroy_qp(sid);
	rdma_destroy_id(cid);
	rdma_destroy_id(sid);
	rdma_destroy_id(lid);
	printf("OK done\n");
	return 0;
}

int main(int argc, char **argv)
{
	if (argc > 1 && !strcmp(argv[1], "gone"))
		return gone();
	if (argc > 1 && !strcmp(argv[1], "wr"))
		return wr();
	struct rdma_event_channel *sch = rdma_create_event_channel(), *cch = rdma_create_event_channel();
	struct rdma_cm_id *lid, *cid, *sid;
	struct rdma_cm_event *e;
	struct sockaddr_in any = { .sin_family = AF_INET };
	int port;

	setvbuf(stdout, NULL, _IONBF, 0);
	if (!sch || !cch)
		FAIL("rdma_create_event_channel: %s", strerror(errno));
	fcntl(sch->fd, F_SETFL, fcntl(sch->fd, F_GETFL) | O_NONBLOCK);
	if (rdma_get_cm_event(sch, &e) != -1 || errno != EAGAIN)
		FAIL("an empty non-blocking channel gives EAGAIN (errno %d)", errno);
	printf("OK non-blocking channel: EAGAIN\n");

	inet_pton(AF_INET, "127.0.0.1", &any.sin_addr);
	if (rdma_create_id(sch, &lid, (void *)0x5eed, RDMA_PS_TCP) || rdma_bind_addr(lid, (struct sockaddr *)&any) || rdma_listen(lid, 4))
		FAIL("listen: %s", strerror(errno));
	port = ntohs(rdma_get_src_port(lid));
	if (!port)
		FAIL("port 0 after binding port 0");
	printf("OK listening on port %d\n", port);

	/* Rejected, with the listener's data and the consumer's reason. */
	cid = dial(cch, port, "hello-request");
	e = expect(sch, RDMA_CM_EVENT_CONNECT_REQUEST);
	if (e->listen_id != lid || e->id == lid || e->id->context != (void *)0x5eed || !has(&e->param.conn, "hello-request"))
		FAIL("the request: listen_id %p id %p context %p data %.*s", (void *)e->listen_id, (void *)e->id, e->id->context,
		     e->param.conn.private_data_len, (const char *)e->param.conn.private_data);
	sid = e->id;
	if (rdma_reject(sid, "go away", 8))
		FAIL("rdma_reject: %s", strerror(errno));
	ack(e);
	e = expect(cch, RDMA_CM_EVENT_REJECTED);
	if (e->status != 28 || !has(&e->param.conn, "go away"))
		FAIL("rejected with status %d, data %.*s", e->status, e->param.conn.private_data_len, (const char *)e->param.conn.private_data);
	ack(e);
	rdma_destroy_qp(cid);
	rdma_destroy_id(cid);
	rdma_destroy_id(sid);
	printf("OK rejected: status 28, the listener's private data\n");

	/* Accepted; private data both ways; a SEND between the queue pairs. */
	cid = dial(cch, port, "hello again");
	e = expect(sch, RDMA_CM_EVENT_CONNECT_REQUEST);
	if (!has(&e->param.conn, "hello again") || e->param.conn.initiator_depth != 1 || e->param.conn.responder_resources != 1)
		FAIL("second request: data or depths");
	sid = e->id;
	ack(e);
	send_checked(sch, cch, cid, sid);
	printf("OK accepted: private data both ways, queue pairs in RTS, 4096 bytes sent and checked\n");
	{
		/* What the library moved the queue pair with, for programs that
		 * move their own. */
		struct ibv_qp_attr qa = { .qp_state = IBV_QPS_RTR };
		int mask = 0;
		if (rdma_init_qp_attr(cid, &qa, &mask) || qa.dest_qp_num != sid->qp->qp_num || !(mask & IBV_QP_DEST_QPN) ||
		    !(mask & IBV_QP_AV) || !qa.ah_attr.is_global)
			FAIL("rdma_init_qp_attr for RTR: dest %u (want %u), mask %#x", qa.dest_qp_num, sid->qp->qp_num, mask);
		qa.qp_state = IBV_QPS_SQD;
		if (rdma_init_qp_attr(cid, &qa, &mask) != -1 || errno != EINVAL)
			FAIL("rdma_init_qp_attr for SQD: not EINVAL");
	}
	printf("OK rdma_init_qp_attr: the peer's queue pair for RTR\n");

	/* One DISCONNECTED on each side, then nothing. */
	if (rdma_disconnect(cid))
		FAIL("rdma_disconnect: %s", strerror(errno));
	ack(expect(cch, RDMA_CM_EVENT_DISCONNECTED));
	ack(expect(sch, RDMA_CM_EVENT_DISCONNECTED));
	if ((e = next(cch, 300)) || (e = next(sch, 300)))
		FAIL("a second event after the disconnection: %s", rdma_event_str(e->event));
	if (cid->qp->state != IBV_QPS_ERR)
		FAIL("the disconnecting side's queue pair is in state %d, not ERR", cid->qp->state);
	printf("OK disconnected: one event each side\n");
	rdma_destroy_qp(cid);
	rdma_destroy_id(cid);
	rdma_destroy_qp(sid);
	rdma_destroy_id(sid);

	/* Pointers that are not ours. */
	{
		long junk[64] = { 0 };
		if (rdma_destroy_id((struct rdma_cm_id *)junk) != -1 || errno != EINVAL)
			FAIL("rdma_destroy_id of junk");
		if (rdma_ack_cm_event((struct rdma_cm_event *)junk) != -1 || errno != EINVAL)
			FAIL("rdma_ack_cm_event of junk");
		if (rdma_connect((struct rdma_cm_id *)junk, NULL) != -1 || errno != EINVAL)
			FAIL("rdma_connect of junk");
		if (rdma_listen(lid, 4) != -1 || errno != EINVAL)
			FAIL("a second rdma_listen");
	}
	printf("OK foreign pointers and a second listen: EINVAL\n");

	/* A listener destroyed under a request it never reported. */
	cid = dial(cch, port, "too late");
	{
		/* Until the request is queued (not taken). */
		struct pollfd p = { .fd = sch->fd, .events = POLLIN };
		if (poll(&p, 1, 10000) != 1)
			FAIL("no request within 10 s");
	}
	if (rdma_destroy_id(lid))
		FAIL("rdma_destroy_id of the listener: %s", strerror(errno));
	e = next(cch, 10000);
	if (!e || (e->event != RDMA_CM_EVENT_UNREACHABLE && e->event != RDMA_CM_EVENT_REJECTED))
		FAIL("the client of a destroyed listener got %s", e ? rdma_event_str(e->event) : "nothing in 10 s");
	printf("OK listener destroyed under a request: the client got %s\n", rdma_event_str(e->event));
	ack(e);
	rdma_destroy_qp(cid);
	rdma_destroy_id(cid);
	rdma_destroy_event_channel(sch);
	rdma_destroy_event_channel(cch);
	printf("OK done\n");
	return 0;
}
