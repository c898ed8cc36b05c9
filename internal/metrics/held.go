package metrics

import (
	"cmp"
	"slices"
	"sync"
	"time"

	"github.com/prometheus/client_golang/prometheus"

	"github.com/machq/machq/internal/stats"
)

// holdings collects, at each scrape, what the server holds: a
// prometheus.Collector reading its statistics.
type holdings struct {
	max   int           // queues, groups and users with series of their own
	fresh time.Duration // Options.StatsInterval
	mu    sync.Mutex
	read  func() stats.Stats
	last  stats.Stats // read at when
	when  time.Time
}

// snapshot returns the statistics, read again only if the last reading
// is older than h.fresh; false before Watch.
func (h *holdings) snapshot() (stats.Stats, bool) {
	h.mu.Lock()
	defer h.mu.Unlock()
	if h.read == nil {
		return stats.Stats{}, false
	}
	if now := time.Now(); h.when.IsZero() || now.Sub(h.when) >= h.fresh {
		h.last, h.when = h.read(), now
	}
	return h.last, true
}

func desc(name, help string, labels ...string) *prometheus.Desc {
	return prometheus.NewDesc(name, help, labels, nil)
}

// The metrics of what the server holds.
var (
	connectionsDesc = desc("machq_connections", "Client connections open.")
	messagesDesc    = desc("machq_messages", "Messages the server holds, private and named queues together, by state: in_line (in their queues), unsent (taken for a consumer, not yet received), pending (delivered in ack mode and not settled, or NAKed and delayed).", "state")
	bytesDesc       = desc("machq_bytes", "Payload bytes of the messages the server holds, by state as machq_messages.", "state")
	pagesDesc       = desc("machq_pages", "Messages held as pages (each an open descriptor of the server), by state as machq_messages.", "state")
	waitingDesc     = desc("machq_waiting", "RETRIEVEs waiting for a message, and STOREs waiting for room, on every queue.")
	descriptorsDesc = desc("machq_descriptors", "Descriptors pages and connections take.")
	descLimitDesc   = desc("machq_descriptor_limit", "Descriptors pages and connections may take (machqd --max-descriptors).")
	queuesDesc      = desc("machq_queues", "Named queues that exist.")
	unlabelledDesc  = desc("machq_queues_unlabelled", "Named queues without series of their own (beyond machqd --metrics-max-queues): their gauges are summed into the series with queue=\"\".")

	queueMessagesDesc = desc("machq_queue_messages", "Messages in line in a named queue (not those pending or delayed).", "queue")
	queueBytesDesc    = desc("machq_queue_bytes", "Payload bytes of the messages in line in a named queue.", "queue")
	queueWaitingDesc  = desc("machq_queue_waiting", "RETRIEVEs waiting on a named queue.", "queue")
	queuePendingDesc  = desc("machq_queue_pending", "Messages of a named queue delivered in ack mode and not yet settled.", "queue")
	queueDelayedDesc  = desc("machq_queue_delayed", "Messages of a named queue NAKed and waiting out their delay.", "queue")
	queueBlockedDesc  = desc("machq_queue_blocked", "STOREs waiting for room in a full named queue.", "queue")
	queueGroupsDesc   = desc("machq_queue_groups", "Consumer groups of a named queue.", "queue")

	queueDeliveredDesc = desc("machq_queue_delivered_total", "Deliveries from a named queue, plain and ack mode, every redelivery counted (restarts for a queue the server no longer remembers, and after DELETE).", "queue")
	queueRedelivDesc   = desc("machq_queue_redelivered_total", "Of a named queue's deliveries, those of a message delivered before in ack mode.", "queue")
	queueAckedDesc     = desc("machq_queue_acked_total", "Deliveries from a named queue acknowledged (ACK).", "queue")
	queueNackedDesc    = desc("machq_queue_nacked_total", "Deliveries from a named queue put back (NAK).", "queue")
	queueDeadDesc      = desc("machq_queue_dead_lettered_total", "Messages of a named queue that became dead letters.", "queue")

	groupsUnlabelledDesc = desc("machq_groups_unlabelled", "Consumer groups without series of their own (beyond machqd --metrics-max-queues, or of a queue without series of its own).")
	groupMessagesDesc    = desc("machq_group_messages", "Messages in a consumer group's line.", "queue", "group")
	groupPendingDesc     = desc("machq_group_pending", "Messages of a consumer group delivered in ack mode and not yet settled.", "queue", "group")
	groupWaitingDesc     = desc("machq_group_waiting", "RETRIEVEs waiting on a consumer group.", "queue", "group")
	groupDeliveredDesc   = desc("machq_group_delivered_total", "Deliveries from a consumer group, every redelivery counted.", "queue", "group")
	groupAckedDesc       = desc("machq_group_acked_total", "Deliveries from a consumer group acknowledged.", "queue", "group")

	userConnectionsDesc = desc("machq_user_connections", "Connections of a user id.", "uid")
	userMessagesDesc    = desc("machq_user_messages", "Messages a user id's stores make the server hold.", "uid")
	userBytesDesc       = desc("machq_user_bytes", "Payload bytes a user id's stores make the server hold.", "uid")
	userPagesDesc       = desc("machq_user_pages", "Pages a user id's stores make the server hold.", "uid")
	userQueuesDesc      = desc("machq_user_queues", "Named queues a user id created that exist.", "uid")
	userWaitingDesc     = desc("machq_user_waiting", "A user id's RETRIEVEs and STOREs waiting.", "uid")
	userDescsDesc       = desc("machq_user_descriptors", "Descriptors a user id's pages and connections take.", "uid")

	limitDesc = desc("machq_limit", "A limit of the server, by the machqd flag that sets it (as machq_limit_refusals_total names them); limits not set have no series.", "limit")

	journalSegmentsDesc = desc("machq_journal_segments", "Segment files of the durable queues' log.")
	journalRecordsDesc  = desc("machq_journal_records_total", "Records appended to the durable queues' log since it began.")
	journalFailedDesc   = desc("machq_journal_failed", "1 when a write of the durable queues' log failed: durable stores are refused until a restart.")
	journalUnsyncedDesc = desc("machq_journal_unsynced_records", "Under --sync lossy-interval, records answered and not yet on disk: what a power loss now would take.")
)

// Describe implements prometheus.Collector.
func (h *holdings) Describe(ch chan<- *prometheus.Desc) {
	for _, d := range []*prometheus.Desc{
		connectionsDesc, messagesDesc, bytesDesc, pagesDesc, waitingDesc, descriptorsDesc, descLimitDesc, queuesDesc, unlabelledDesc,
		queueMessagesDesc, queueBytesDesc, queueWaitingDesc, queuePendingDesc, queueDelayedDesc, queueBlockedDesc, queueGroupsDesc,
		queueDeliveredDesc, queueRedelivDesc, queueAckedDesc, queueNackedDesc, queueDeadDesc,
		groupsUnlabelledDesc, groupMessagesDesc, groupPendingDesc, groupWaitingDesc, groupDeliveredDesc, groupAckedDesc,
		userConnectionsDesc, userMessagesDesc, userBytesDesc, userPagesDesc, userQueuesDesc, userWaitingDesc, userDescsDesc,
		journalSegmentsDesc, journalRecordsDesc, journalFailedDesc, journalUnsyncedDesc, limitDesc,
	} {
		ch <- d
	}
}

// Collect implements prometheus.Collector.
func (h *holdings) Collect(ch chan<- prometheus.Metric) {
	st, ok := h.snapshot()
	if !ok {
		return
	}
	gauge := func(d *prometheus.Desc, v float64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.GaugeValue, v, labels...)
	}
	counter := func(d *prometheus.Desc, v uint64, labels ...string) {
		ch <- prometheus.MustNewConstMetric(d, prometheus.CounterValue, float64(v), labels...)
	}

	gauge(connectionsDesc, float64(st.Clients))
	inLine := stats.Held{
		Messages: st.Messages - st.Unsent.Messages - st.Pending.Messages,
		Bytes:    st.Bytes - st.Unsent.Bytes - st.Pending.Bytes,
		Pages:    st.Pages - st.Unsent.Pages - st.Pending.Pages,
	}
	for _, s := range []struct {
		state string
		held  stats.Held
	}{{"in_line", inLine}, {"unsent", st.Unsent}, {"pending", st.Pending}} {
		gauge(messagesDesc, float64(s.held.Messages), s.state)
		gauge(bytesDesc, float64(s.held.Bytes), s.state)
		gauge(pagesDesc, float64(s.held.Pages), s.state)
	}
	gauge(waitingDesc, float64(st.Waiting))
	gauge(descriptorsDesc, float64(st.Descriptors))
	gauge(descLimitDesc, float64(st.DescriptorLimit))

	h.collectQueues(st.Queues, gauge, counter)
	h.collectUsers(st.Users, gauge)

	if l := st.Limits; l != nil {
		for _, lim := range []struct {
			flag string
			v    int64
		}{
			{"max-connections", l.MaxConnections}, {"max-connections-per-uid", l.MaxConnectionsPerUID},
			{"max-stored-messages", l.MaxStoredMessages}, {"max-stored-bytes", l.MaxStoredBytes}, {"max-stored-pages", l.MaxStoredPages},
			{"max-stored-messages-per-uid", l.MaxStoredMessagesPerUID}, {"max-stored-bytes-per-uid", l.MaxStoredBytesPerUID}, {"max-stored-pages-per-uid", l.MaxStoredPagesPerUID},
			{"max-queue-messages", l.MaxQueueMessages}, {"max-queue-bytes", l.MaxQueueBytes},
			{"max-private-messages", l.MaxPrivateMessages}, {"max-private-bytes", l.MaxPrivateBytes},
			{"max-queues", l.MaxQueues}, {"max-queues-per-uid", l.MaxQueuesPerUID},
			{"max-waiting", l.MaxWaiting}, {"max-waiting-total", l.MaxWaitingTotal}, {"max-waiting-per-uid", l.MaxWaitingPerUID},
			{"max-groups", l.MaxGroups}, {"max-groups-per-uid", l.MaxGroupsPerUID}, {"max-pending", l.MaxPending},
			{"max-descriptors-per-uid", l.MaxDescriptorsPerUID},
		} {
			if lim.v >= 0 {
				gauge(limitDesc, float64(lim.v), lim.flag)
			}
		}
	}
	if d := st.Durable; d != nil {
		gauge(journalSegmentsDesc, float64(d.Segments))
		counter(journalRecordsDesc, d.Records)
		failed := 0.0
		if d.Failed != "" {
			failed = 1
		}
		gauge(journalFailedDesc, failed)
		if d.Unsynced != nil {
			gauge(journalUnsyncedDesc, float64(d.Unsynced.Records))
		}
	}
}

type (
	gaugeFunc   func(d *prometheus.Desc, v float64, labels ...string)
	counterFunc func(d *prometheus.Desc, v uint64, labels ...string)
)

// depth is what a queue holds: in line, pending and delayed.
func depth(q *stats.Queue) int { return q.Messages + q.Pending + q.Delayed }

// collectQueues sends the series of the deepest h.max queues (ties by
// name), and the gauges of the others summed under queue="".
func (h *holdings) collectQueues(queues []stats.Queue, gauge gaugeFunc, counter counterFunc) {
	gauge(queuesDesc, float64(len(queues)))
	order := make([]*stats.Queue, len(queues))
	for i := range queues {
		order[i] = &queues[i]
	}
	slices.SortFunc(order, func(a, b *stats.Queue) int {
		return cmp.Or(cmp.Compare(depth(b), depth(a)), cmp.Compare(a.Name, b.Name))
	})
	labelled := order[:min(len(order), h.max)]
	var rest stats.Queue
	restGroups := 0
	for _, q := range order[len(labelled):] {
		rest.Messages += q.Messages
		rest.Bytes += q.Bytes
		rest.Waiting += q.Waiting
		rest.Pending += q.Pending
		rest.Delayed += q.Delayed
		rest.Blocked += q.Blocked
		restGroups += len(q.Groups)
	}
	queueGauges := func(q *stats.Queue, groups int, name string) {
		gauge(queueMessagesDesc, float64(q.Messages), name)
		gauge(queueBytesDesc, float64(q.Bytes), name)
		gauge(queueWaitingDesc, float64(q.Waiting), name)
		gauge(queuePendingDesc, float64(q.Pending), name)
		gauge(queueDelayedDesc, float64(q.Delayed), name)
		gauge(queueBlockedDesc, float64(q.Blocked), name)
		gauge(queueGroupsDesc, float64(groups), name)
	}
	type group struct {
		queue string
		g     *stats.Group
	}
	var groups []group
	for _, q := range labelled {
		queueGauges(q, len(q.Groups), q.Name)
		counter(queueDeliveredDesc, q.Delivered, q.Name)
		counter(queueRedelivDesc, q.Redelivered, q.Name)
		counter(queueAckedDesc, q.Acked, q.Name)
		counter(queueNackedDesc, q.Nacked, q.Name)
		counter(queueDeadDesc, q.DeadLettered, q.Name)
		for i := range q.Groups {
			groups = append(groups, group{q.Name, &q.Groups[i]})
		}
	}
	unlabelled := len(order) - len(labelled)
	gauge(unlabelledDesc, float64(unlabelled))
	if unlabelled > 0 {
		queueGauges(&rest, restGroups, "")
	}

	slices.SortFunc(groups, func(a, b group) int {
		return cmp.Or(cmp.Compare(b.g.Messages+b.g.Pending+b.g.Delayed, a.g.Messages+a.g.Pending+a.g.Delayed),
			cmp.Compare(a.queue, b.queue), cmp.Compare(a.g.Name, b.g.Name))
	})
	shown := groups[:min(len(groups), h.max)]
	gauge(groupsUnlabelledDesc, float64(restGroups+len(groups)-len(shown)))
	for _, g := range shown {
		gauge(groupMessagesDesc, float64(g.g.Messages), g.queue, g.g.Name)
		gauge(groupPendingDesc, float64(g.g.Pending), g.queue, g.g.Name)
		gauge(groupWaitingDesc, float64(g.g.Waiting), g.queue, g.g.Name)
		counter(groupDeliveredDesc, g.g.Delivered, g.queue, g.g.Name)
		counter(groupAckedDesc, g.g.Acked, g.queue, g.g.Name)
	}
}

// collectUsers sends the series of the h.max users holding the most
// (then with the most connections, then by uid), and the others summed
// under uid="".
func (h *holdings) collectUsers(users []stats.User, gauge gaugeFunc) {
	order := slices.Clone(users)
	slices.SortFunc(order, func(a, b stats.User) int {
		return cmp.Or(cmp.Compare(b.Messages, a.Messages), cmp.Compare(b.Connections, a.Connections), cmp.Compare(a.UID, b.UID))
	})
	send := func(u *stats.User, uid string) {
		gauge(userConnectionsDesc, float64(u.Connections), uid)
		gauge(userMessagesDesc, float64(u.Messages), uid)
		gauge(userBytesDesc, float64(u.Bytes), uid)
		gauge(userPagesDesc, float64(u.Pages), uid)
		gauge(userQueuesDesc, float64(u.Queues), uid)
		gauge(userWaitingDesc, float64(u.Waiting), uid)
		gauge(userDescsDesc, float64(u.Descriptors), uid)
	}
	n := min(len(order), h.max)
	for i := range order[:n] {
		send(&order[i], uidLabel(order[i].UID))
	}
	if len(order) > n {
		var rest stats.User
		for _, u := range order[n:] {
			rest.Connections += u.Connections
			rest.Messages += u.Messages
			rest.Bytes += u.Bytes
			rest.Pages += u.Pages
			rest.Queues += u.Queues
			rest.Waiting += u.Waiting
			rest.Descriptors += u.Descriptors
		}
		send(&rest, "")
	}
}
