//! Statement text per dialect, and the caller's deadline as a per-statement
//! timeout.
//!
//! Templates mark where a server-side timeout goes: `[USING TIMEOUT]`
//! (a statement with no other `USING` parameter) and `[AND TIMEOUT]` (after
//! `USING TTL ?`). On ScyllaDB they become `USING TIMEOUT ?` / `AND TIMEOUT ?`
//! and the caller's remaining deadline is bound there, so the cluster stops
//! working on a request nobody waits for; on Cassandra they vanish and the
//! deadline bounds only the driver's wait.

use std::time::Duration;

use scylla::value::{CqlDuration, CqlValue};

/// The dialect the cluster speaks.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Flavor {
    Scylla,
    Cassandra,
}

const USING_TIMEOUT: &str = "[USING TIMEOUT]";
const AND_TIMEOUT: &str = "[AND TIMEOUT]";

/// A statement's text for `flavor`, and the position among its bind
/// markers where the timeout value goes (`None`: no timeout marker).
pub fn render(template: &str, keyspace: &str, flavor: Flavor) -> (String, Option<usize>) {
    let text = template.replace("{ks}", keyspace);
    let marker = [USING_TIMEOUT, AND_TIMEOUT]
        .into_iter()
        .filter_map(|m| text.find(m).map(|i| (i, m)))
        .min();
    let Some((at, marker)) = marker else {
        return (text, None);
    };
    let position = text[..at].matches('?').count();
    let replacement = match (flavor, marker) {
        (Flavor::Cassandra, _) => "",
        (Flavor::Scylla, USING_TIMEOUT) => "USING TIMEOUT ?",
        (Flavor::Scylla, _) => "AND TIMEOUT ?",
    };
    let rendered = text.replacen(marker, replacement, 1);
    let rendered = rendered.split_whitespace().collect::<Vec<_>>().join(" ");
    (rendered, (flavor == Flavor::Scylla).then_some(position))
}

/// Margin left for the network and the response: the server gives up this
/// much before the caller does, so its answer (even a timeout) still arrives.
pub const DEADLINE_MARGIN: Duration = Duration::from_millis(5);

/// The time one statement may take: the caller's remaining deadline (less a
/// margin) when there is one, never more than the configured default.
/// `None` means the deadline has already passed: do not send the statement.
pub fn statement_timeout(remaining: Option<Duration>, default: Duration) -> Option<Duration> {
    match remaining {
        None => Some(default),
        Some(left) => {
            let usable = left.checked_sub(DEADLINE_MARGIN)?;
            if usable < Duration::from_millis(1) {
                None
            } else {
                Some(usable.min(default))
            }
        }
    }
}

/// A duration as CQL `duration` (whole milliseconds, at least one).
pub fn cql_duration(d: Duration) -> CqlValue {
    let ms = d.as_millis().clamp(1, i64::MAX as u128 / 1_000_000) as i64;
    CqlValue::Duration(CqlDuration {
        months: 0,
        days: 0,
        nanoseconds: ms * 1_000_000,
    })
}

/// Seconds to live for a row that matters until `until_ms`: at least one
/// (0 would mean "forever" in CQL), at most CQL's 20-year cap.
pub fn ttl_secs(until_ms: i64, now_ms: i64) -> i32 {
    const MAX_TTL: i64 = 630_720_000;
    let ms = until_ms.saturating_sub(now_ms);
    let secs = ms.saturating_add(999).div_euclid(1000);
    secs.clamp(1, MAX_TTL) as i32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn scylla_statements_bind_the_timeout_where_the_marker_is() {
        let (s, pos) = render(
            "UPDATE {ks}.devices [USING TIMEOUT] SET push_token = ? WHERE device_id = ? IF revoked_at = null",
            "ks",
            Flavor::Scylla,
        );
        assert_eq!(
            s,
            "UPDATE ks.devices USING TIMEOUT ? SET push_token = ? WHERE device_id = ? IF revoked_at = null"
        );
        assert_eq!(pos, Some(0));
        let (s, pos) = render(
            "INSERT INTO {ks}.t (a, b) VALUES (?, ?) USING TTL ? [AND TIMEOUT]",
            "ks",
            Flavor::Scylla,
        );
        assert_eq!(
            s,
            "INSERT INTO ks.t (a, b) VALUES (?, ?) USING TTL ? AND TIMEOUT ?"
        );
        assert_eq!(pos, Some(3));
        let (s, pos) = render(
            "SELECT a FROM {ks}.t WHERE k = ? [USING TIMEOUT]",
            "ks",
            Flavor::Scylla,
        );
        assert_eq!(s, "SELECT a FROM ks.t WHERE k = ? USING TIMEOUT ?");
        assert_eq!(pos, Some(1));
    }

    #[test]
    fn cassandra_statements_have_no_timeout_clause() {
        let (s, pos) = render(
            "UPDATE {ks}.devices [USING TIMEOUT] SET a = ? WHERE k = ?",
            "ks",
            Flavor::Cassandra,
        );
        assert_eq!(s, "UPDATE ks.devices SET a = ? WHERE k = ?");
        assert_eq!(pos, None);
        let (s, _) = render(
            "INSERT INTO {ks}.t (a) VALUES (?) USING TTL ? [AND TIMEOUT]",
            "ks",
            Flavor::Cassandra,
        );
        assert_eq!(s, "INSERT INTO ks.t (a) VALUES (?) USING TTL ?");
        let (s, pos) = render("SELECT a FROM {ks}.t", "ks", Flavor::Scylla);
        assert_eq!((s.as_str(), pos), ("SELECT a FROM ks.t", None));
    }

    #[test]
    fn deadline_becomes_the_statement_timeout() {
        let default = Duration::from_millis(2_000);
        assert_eq!(statement_timeout(None, default), Some(default));
        assert_eq!(
            statement_timeout(Some(Duration::from_millis(300)), default),
            Some(Duration::from_millis(295))
        );
        assert_eq!(
            statement_timeout(Some(Duration::from_secs(60)), default),
            Some(default),
            "never longer than the default"
        );
        assert_eq!(
            statement_timeout(Some(Duration::from_millis(5)), default),
            None
        );
        assert_eq!(statement_timeout(Some(Duration::ZERO), default), None);
        assert_eq!(
            cql_duration(Duration::from_millis(295)),
            CqlValue::Duration(CqlDuration {
                months: 0,
                days: 0,
                nanoseconds: 295_000_000
            })
        );
        assert_eq!(
            cql_duration(Duration::from_micros(10)),
            cql_duration(Duration::from_millis(1)),
            "at least a millisecond"
        );
    }

    #[test]
    fn ttls_round_up_and_never_mean_forever() {
        assert_eq!(ttl_secs(10_500, 10_000), 1);
        assert_eq!(ttl_secs(12_001, 10_000), 3);
        assert_eq!(
            ttl_secs(0, 10_000),
            1,
            "already past: one second, not 0 (= no TTL)"
        );
        assert_eq!(ttl_secs(i64::MAX, 0), 630_720_000);
    }
}
