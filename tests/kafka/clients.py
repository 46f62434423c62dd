"""Real Kafka clients against `flowc serve`, driven by tests/kafka.rs.

usage: clients.py BOOTSTRAP PHASE [TOPIC]
Phases print one `ok NAME detail` line per check and exit non-zero (with the reason)
on the first failure. Works with confluent-kafka 1.7 (Debian) and 2.x (PyPI).
"""
import sys
import time
import uuid

from confluent_kafka import Consumer, KafkaError, Producer, TopicPartition
from confluent_kafka.admin import AdminClient, NewTopic

BOOT, PHASE = sys.argv[1], sys.argv[2]
DEADLINE_S = 30


def ok(name, detail=""):
    print("ok", name, detail, flush=True)


def create(topic, partitions):
    admin = AdminClient({"bootstrap.servers": BOOT})
    for t, f in admin.create_topics([NewTopic(topic, partitions, 1)]).items():
        f.result(20)


def produce(conf, topic, msgs):
    p = Producer(dict({"bootstrap.servers": BOOT, "acks": "all", "linger.ms": 5}, **conf))
    errors, offsets = [], []

    def cb(err, m):
        if err is not None:
            errors.append(err)
        else:
            offsets.append((m.partition(), m.offset()))

    for m in msgs:
        p.produce(topic, callback=cb, **m)
    left = p.flush(20)
    assert left == 0, "%d messages not delivered" % left
    return errors, offsets


def consume_all(topic, partitions, n, conf=None):
    c = Consumer(dict({"bootstrap.servers": BOOT, "group.id": "reader-" + uuid.uuid4().hex,
                       "enable.auto.commit": False}, **(conf or {})))
    c.assign([TopicPartition(topic, p, 0) for p in range(partitions)])
    got, t0 = [], time.time()
    while len(got) < n and time.time() - t0 < DEADLINE_S:
        m = c.poll(0.5)
        if m is None or m.error():
            continue
        got.append(m)
    c.close()
    return got


def phase_produce():
    # acks=all with idempotence, every codec, keys + headers + explicit timestamps.
    for codec in ["none", "gzip", "snappy", "lz4", "zstd"]:
        topic = "py-%s-%s" % (codec, uuid.uuid4().hex[:6])
        create(topic, 3)
        msgs = [{"key": b"k%d" % (i % 7), "value": (b"value-%d-" % i) * 10, "timestamp": 1_700_000_000_000 + i,
                 "headers": [("h", b"%d" % i)]} for i in range(300)]
        errors, offsets = produce({"enable.idempotence": True, "compression.type": codec}, topic, msgs)
        assert not errors, errors
        assert len(offsets) == 300
        got = consume_all(topic, 3, 300)
        assert len(got) == 300, "consumed %d of 300 (%s)" % (len(got), codec)
        by_key = {}
        for m in got:
            i = int(m.value().split(b"-")[1])
            assert m.key() == b"k%d" % (i % 7)
            assert m.timestamp()[1] == 1_700_000_000_000 + i, m.timestamp()
            assert m.headers() == [("h", b"%d" % i)], m.headers()
            by_key.setdefault(m.key(), set()).add(m.partition())
        assert all(len(ps) == 1 for ps in by_key.values()), "a key spread over partitions"
        ok("produce_consume_" + codec, "300 msgs, idempotent, acks=all")
    # A batch over the broker's --max-message-bytes (the test starts it at 200000) is refused.
    topic = "py-big-" + uuid.uuid4().hex[:6]
    create(topic, 1)
    errors, _ = produce({"message.max.bytes": 4_000_000, "compression.type": "none"}, topic,
                        [{"value": b"x" * 300_000}])
    assert errors and errors[0].code() == KafkaError.MSG_SIZE_TOO_LARGE, errors
    ok("message_too_large", str(errors[0]))


def group_consumer(group, topic, name):
    return Consumer({"bootstrap.servers": BOOT, "group.id": group, "client.id": name,
                     "enable.auto.commit": False, "auto.offset.reset": "earliest",
                     "session.timeout.ms": 6000, "heartbeat.interval.ms": 500,
                     "partition.assignment.strategy": "range"})


def poll_until(consumers, pred, what):
    t0 = time.time()
    while time.time() - t0 < DEADLINE_S:
        for c, sink in consumers:
            m = c.poll(0.1)
            if m is not None and not m.error():
                sink.append(m)
        if pred():
            return
    raise AssertionError("timed out waiting for " + what)


def phase_group1():
    topic = sys.argv[3]
    group = "g-" + topic
    create(topic, 4)
    _, offsets = produce({}, topic, [{"key": b"key-%d" % i, "value": b"%d" % i} for i in range(400)])
    a, b = group_consumer(group, topic, "a"), group_consumer(group, topic, "b")
    a.subscribe([topic])
    b.subscribe([topic])
    got_a, got_b = [], []
    poll_until([(a, got_a), (b, got_b)],
               lambda: len(a.assignment()) == 2 and len(b.assignment()) == 2, "both members assigned two partitions")
    ok("group_two_members", "a=%s b=%s" % (sorted(p.partition for p in a.assignment()),
                                           sorted(p.partition for p in b.assignment())))
    # Read part of the data, commit what was read (per partition: next offset), then b leaves.
    poll_until([(a, got_a), (b, got_b)], lambda: len(got_a) + len(got_b) >= 150, "150 records")
    for c, got in [(a, got_a), (b, got_b)]:
        if got:
            c.commit(asynchronous=False)
    b.close()
    poll_until([(a, got_a)], lambda: len(a.assignment()) == 4, "the rebalance giving a all four partitions")
    ok("group_rebalance_on_leave", "a now has %d partitions" % len(a.assignment()))
    committed = {tp.partition: tp.offset for tp in a.committed([TopicPartition(topic, p) for p in range(4)], 10)}
    a.close()
    print("committed", ",".join("%d:%d" % (p, committed[p]) for p in sorted(committed)), flush=True)


def phase_group2():
    # After a server restart: a new member resumes at the committed offsets.
    topic, expect = sys.argv[3], sys.argv[4]
    group = "g-" + topic
    committed = {int(p): int(o) for p, o in (x.split(":") for x in expect.split(","))}
    c = group_consumer(group, topic, "c")
    c.subscribe([topic])
    got = []
    remaining = 400 - sum(o for o in committed.values() if o > 0)
    poll_until([(c, got)], lambda: len(got) >= remaining, "%d remaining records" % remaining)
    first = {}
    for m in got:
        first.setdefault(m.partition(), m.offset())
    for p, o in committed.items():
        if o >= 0 and p in first:
            assert first[p] == o, "partition %d resumed at %d, committed %d" % (p, first[p], o)
    assert len(got) == remaining, "got %d, expected %d (duplicates?)" % (len(got), remaining)
    c.close()
    ok("group_resume_after_restart", "%d records from %s" % (len(got), first))


{"produce": phase_produce, "group1": phase_group1, "group2": phase_group2}[PHASE]()
