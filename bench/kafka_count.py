"""Count the change records sluice delivered to Kafka, by reading the topics
back (committed records only, tombstones not counted).

Usage: kafka_count.py BOOTSTRAP TOPIC_PREFIX
Runs under a venv with kafka-python and zstandard (bench/kafka.sh makes it).
"""
import sys
import time

from kafka import KafkaConsumer, TopicPartition

bootstrap, prefix = sys.argv[1], sys.argv[2]
consumer = KafkaConsumer(
    bootstrap_servers=bootstrap,
    isolation_level="read_committed",
    enable_auto_commit=False,
    auto_offset_reset="earliest",
    max_partition_fetch_bytes=8 << 20,
    fetch_max_bytes=32 << 20,
)
topics = [t for t in consumer.topics() if t.startswith(prefix)]
parts = [TopicPartition(t, p) for t in topics for p in (consumer.partitions_for_topic(t) or [])]
if not parts:
    print(0)
    sys.exit(0)
consumer.assign(parts)
consumer.seek_to_beginning(*parts)
end = consumer.end_offsets(parts)
count = 0
deadline = time.monotonic() + 600
while any(consumer.position(p) < end[p] for p in parts):
    if time.monotonic() > deadline:
        sys.exit(f"timed out reading {prefix}*: at {[(p, consumer.position(p), end[p]) for p in parts]}")
    for records in consumer.poll(timeout_ms=1000, max_records=100000).values():
        count += sum(1 for r in records if r.value is not None)
print(count)
