//! Where an embedded store's bytes go, table by table (redb's own
//! statistics), for a stopped server's file:
//!
//! ```sh
//! cargo run --release -p sesame-storage --example store_stats -- sesame-data/sesame.redb
//! ```
//!
//! `stored` is keys and values, `fragmented` the unused part of the
//! B-tree pages; what the file holds beyond both is pages redb freed and
//! keeps for reuse.

use redb::{Database, ReadableTableMetadata, TableHandle};

fn main() -> Result<(), Box<dyn std::error::Error>> {
    let path = std::env::args()
        .nth(1)
        .ok_or("usage: store_stats <path to sesame.redb>")?;
    let db = Database::open(&path)?;
    let txn = db.begin_read()?;
    println!(
        "{:24} {:>9} {:>12} {:>11} {:>12}",
        "table", "rows", "stored", "metadata", "fragmented"
    );
    let (mut stored, mut metadata, mut fragmented) = (0, 0, 0);
    for handle in txn.list_tables()? {
        let table = txn.open_untyped_table(handle.clone())?;
        let s = table.stats()?;
        println!(
            "{:24} {:>9} {:>12} {:>11} {:>12}",
            handle.name(),
            table.len()?,
            s.stored_bytes(),
            s.metadata_bytes(),
            s.fragmented_bytes()
        );
        stored += s.stored_bytes();
        metadata += s.metadata_bytes();
        fragmented += s.fragmented_bytes();
    }
    println!(
        "{:24} {:>9} {stored:>12} {metadata:>11} {fragmented:>12}",
        "all tables", ""
    );
    println!("file: {} bytes", std::fs::metadata(&path)?.len());
    Ok(())
}
