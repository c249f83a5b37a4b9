//! The queue's metric names, all here.

/// `sesame_queue_produce_errors_total{topic}`: messages the backend refused
/// or did not acknowledge in time.
pub const PRODUCE_ERRORS: &str = "sesame_queue_produce_errors_total";
/// `sesame_queue_undecodable_messages_total{stream}`: messages that did not
/// decode (`push`: moved to dead letters; `events`: skipped).
pub const UNDECODABLE: &str = "sesame_queue_undecodable_messages_total";
/// `sesame_queue_broker_up`: 1 while a Kafka broker answers, 0 while none does.
pub const BROKER_UP: &str = "sesame_queue_broker_up";

/// `sesame_queue_consumer_lag{topic}`: jobs in this dispatcher's partitions
/// not finished yet (sum over dispatchers for the backlog).
pub const CONSUMER_LAG: &str = "sesame_queue_consumer_lag";

pub fn describe() {
    metrics::describe_gauge!(
        CONSUMER_LAG,
        "push jobs in this dispatcher's partitions not finished yet, by topic"
    );
    metrics::describe_counter!(
        PRODUCE_ERRORS,
        "messages the queue backend refused or did not acknowledge in time, by topic"
    );
    metrics::describe_counter!(
        UNDECODABLE,
        "undecodable queue messages (push: moved to dead letters; events: skipped)"
    );
    metrics::describe_gauge!(
        BROKER_UP,
        "1 while a Kafka broker answers, 0 while none does"
    );
}

pub fn produce_error(topic: &str) {
    metrics::counter!(PRODUCE_ERRORS, "topic" => topic.to_owned()).increment(1);
}

/// Registers a topic's error counter at 0.
pub fn produce_errors_start(topic: &str) {
    metrics::counter!(PRODUCE_ERRORS, "topic" => topic.to_owned()).increment(0);
}

pub fn undecodable(stream: &'static str) {
    metrics::counter!(UNDECODABLE, "stream" => stream).increment(1);
}

pub fn broker_up(up: bool) {
    metrics::gauge!(BROKER_UP).set(if up { 1.0 } else { 0.0 });
}

pub fn consumer_lag(topic: &str, lag: i64) {
    metrics::gauge!(CONSUMER_LAG, "topic" => topic.to_owned()).set(lag as f64);
}
