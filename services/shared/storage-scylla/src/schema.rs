//! The schema as versioned CQL files (`schema/NNNN_name.cql`), applied in
//! order by `sesame migrate` and recorded in `<keyspace>.schema_migrations`.
//! Every statement is `IF NOT EXISTS` (or an `ALTER TABLE ... ADD` whose
//! "column exists" answer counts as done), so applying a migration again
//! (after one interrupted half-way) changes nothing.

use crate::config::ScyllaConfig;
use crate::cql::Flavor;

/// One schema version: its number, name and CQL text (`{keyspace}` is
/// replaced by the configured keyspace).
pub struct Migration {
    pub version: i32,
    pub name: &'static str,
    pub cql: &'static str,
}

/// Every migration, oldest first. A new schema version is a new file here;
/// applied files are never edited.
pub const MIGRATIONS: &[Migration] = &[
    Migration {
        version: 1,
        name: "initial",
        cql: include_str!("../schema/0001_initial.cql"),
    },
    Migration {
        version: 2,
        name: "tenant_client_identity",
        cql: include_str!("../schema/0002_tenant_client_identity.cql"),
    },
    Migration {
        version: 3,
        name: "api_key_admin",
        cql: include_str!("../schema/0003_api_key_admin.cql"),
    },
    Migration {
        version: 4,
        name: "audit",
        cql: include_str!("../schema/0004_audit.cql"),
    },
    Migration {
        version: 5,
        name: "webhooks",
        cql: include_str!("../schema/0005_webhooks.cql"),
    },
];

/// `ALTER TABLE ... ADD <column>`: not idempotent in CQL itself.
pub fn is_add_column(statement: &str) -> bool {
    let s = statement.to_ascii_uppercase();
    s.starts_with("ALTER TABLE") && s.contains(" ADD ")
}

/// The server's answer to adding a column that is already there (ScyllaDB
/// and Cassandra word it the same way).
pub fn column_exists_error(message: &str) -> bool {
    message.contains("conflicts with an existing column") || message.contains("already exist")
}

/// The version a server needs.
pub fn latest_version() -> i32 {
    MIGRATIONS.iter().map(|m| m.version).max().unwrap_or(0)
}

/// `CREATE KEYSPACE` with `NetworkTopologyStrategy` and the configured
/// replication factor per datacenter.
pub fn keyspace_statement(config: &ScyllaConfig, flavor: Flavor) -> String {
    let dcs: Vec<String> = config
        .section
        .replication
        .iter()
        .map(|(dc, rf)| format!("'{dc}': {rf}"))
        .collect();
    let mut cql = format!(
        "CREATE KEYSPACE IF NOT EXISTS {} WITH replication = {{'class': 'NetworkTopologyStrategy', {}}}",
        config.keyspace,
        dcs.join(", ")
    );
    if flavor == Flavor::Scylla {
        cql.push_str(&format!(
            " AND tablets = {{'enabled': {}}}",
            config.section.tablets
        ));
    }
    cql
}

pub fn migrations_table_statement(keyspace: &str) -> String {
    format!(
        "CREATE TABLE IF NOT EXISTS {keyspace}.schema_migrations (version int PRIMARY KEY, name text, applied_at bigint)"
    )
}

/// The statements of one CQL file: comments dropped, split on `;`,
/// `{keyspace}` substituted.
pub fn statements(cql: &str, keyspace: &str) -> Vec<String> {
    let without_comments: String = cql
        .lines()
        .map(|l| match l.find("--") {
            Some(i) => &l[..i],
            None => l,
        })
        .collect::<Vec<_>>()
        .join("\n");
    without_comments
        .split(';')
        .map(|s| s.trim())
        .filter(|s| !s.is_empty())
        .map(|s| s.replace("{keyspace}", keyspace))
        .collect()
}

/// Everything `sesame migrate` would run on an empty cluster, in order.
pub fn plan(config: &ScyllaConfig, flavor: Flavor) -> Vec<String> {
    let mut out = vec![
        keyspace_statement(config, flavor),
        migrations_table_statement(&config.keyspace),
    ];
    for m in MIGRATIONS {
        out.extend(statements(m.cql, &config.keyspace));
        out.push(format!(
            "INSERT INTO {}.schema_migrations (version, name, applied_at) VALUES ({}, '{}', <now>)",
            config.keyspace, m.version, m.name
        ));
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::config::ScyllaSection;

    fn config() -> ScyllaConfig {
        let section = ScyllaSection {
            replication: [("eu-west".to_owned(), 3), ("eu-central".to_owned(), 2)].into(),
            ..Default::default()
        };
        ScyllaConfig::from_uri("scylla://h/sesame_test", section).unwrap()
    }

    #[test]
    fn keyspace_uses_network_topology_per_datacenter() {
        let c = config();
        assert_eq!(
            keyspace_statement(&c, Flavor::Cassandra),
            "CREATE KEYSPACE IF NOT EXISTS sesame_test WITH replication = \
             {'class': 'NetworkTopologyStrategy', 'eu-central': 2, 'eu-west': 3}"
        );
        assert!(
            keyspace_statement(&c, Flavor::Scylla).ends_with("AND tablets = {'enabled': false}")
        );
    }

    #[test]
    fn files_split_into_idempotent_statements_in_the_keyspace() {
        let c = config();
        let all = plan(&c, Flavor::Scylla);
        let tables: Vec<&String> = all
            .iter()
            .filter(|s| s.starts_with("CREATE TABLE"))
            .collect();
        // schema_migrations plus one table per access path.
        assert_eq!(tables.len(), 20, "{tables:#?}");
        for s in &tables {
            assert!(
                s.starts_with("CREATE TABLE IF NOT EXISTS sesame_test."),
                "{s}"
            );
            assert!(!s.contains("--") && !s.contains("{keyspace}"), "{s}");
        }
        for s in &all {
            assert!(!s.to_uppercase().contains("ALLOW FILTERING"), "{s}");
            assert!(!s.contains("CREATE INDEX"), "{s}");
        }
        assert_eq!(latest_version(), 5);
        // Every statement either cannot repeat harm or is recognised as done.
        for st in &all {
            let upper = st.to_ascii_uppercase();
            assert!(
                upper.contains("IF NOT EXISTS") || is_add_column(st) || upper.starts_with("INSERT"),
                "{st}"
            );
        }
        assert!(column_exists_error(
            "Invalid column name client_identity because it conflicts with an existing column"
        ));
        assert!(!column_exists_error("Keyspace sesame does not exist"));
        let versions: Vec<i32> = MIGRATIONS.iter().map(|m| m.version).collect();
        let mut sorted = versions.clone();
        sorted.sort();
        sorted.dedup();
        assert_eq!(versions, sorted, "versions strictly increasing");
    }

    #[test]
    fn comments_do_not_swallow_statements() {
        let s = statements(
            "-- a; b\nCREATE TABLE {keyspace}.x (a int PRIMARY KEY); -- tail\n\n",
            "k",
        );
        assert_eq!(s, vec!["CREATE TABLE k.x (a int PRIMARY KEY)"]);
    }
}
