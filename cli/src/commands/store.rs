//! `kiln du` and `kiln prune`: what the state directory holds, and getting space back
//! (the logic is the engine's [`kiln_engine::store`]; this renders it).

use clap::Args;
use kiln_cache::StateDir;
use kiln_engine::store::{self, Reclaim};

use super::remote::BuilderArgs;
use super::{Failure, block_on, human_size, print_table};

/// Arguments of `kiln prune`.
#[derive(Args)]
pub struct PruneArgs {
    /// Remove all build cache, not only what no named image uses.
    #[arg(short, long)]
    all: bool,
    /// Prune a remote builder's cache instead.
    #[command(flatten)]
    remote: BuilderArgs,
}

/// Arguments of `kiln du`.
#[derive(Args)]
pub struct DuArgs {
    /// Show a remote builder's disk use instead.
    #[command(flatten)]
    remote: BuilderArgs,
}

impl PruneArgs {
    /// Whether a remote builder's cache is pruned.
    pub fn is_remote(&self) -> bool {
        self.remote.is_remote()
    }
}

impl DuArgs {
    /// Whether a remote builder's disk use is shown.
    pub fn is_remote(&self) -> bool {
        self.remote.is_remote()
    }
}

/// Prints a remote builder's usage records, BuildKit's way, and their total.
fn print_records(records: &[kiln_api::control::UsageRecord]) {
    let mut table = vec![[
        "ID".to_string(),
        "RECLAIMABLE".into(),
        "SIZE".into(),
        "DESCRIPTION".into(),
    ]];
    for record in records {
        table.push([
            record.id.clone(),
            (!record.shared && !record.in_use).to_string(),
            human_size(u64::try_from(record.size).unwrap_or(0)),
            record.description.clone(),
        ]);
    }
    print_table(&table);
    let total: i64 = records.iter().map(|r| r.size).sum();
    println!("Total: {}", human_size(u64::try_from(total).unwrap_or(0)));
}

/// `kiln du`.
pub fn du(state: &StateDir, args: DuArgs) -> Result<(), Failure> {
    if let Some(builder) = &args.remote.builder {
        let records = block_on(kiln_api::client::disk_usage(
            builder.clone(),
            args.remote.tls(),
        ))?;
        print_records(&records);
        return Ok(());
    }
    super::reap(state);
    let rows = store::usage(state).map_err(|e| Failure::msg(format!("{e:#}")))?;
    let mut table = vec![[
        "TYPE".to_string(),
        "COUNT".into(),
        "SIZE".into(),
        "RECLAIMABLE".into(),
    ]];
    for row in &rows {
        table.push([
            row.kind.to_string(),
            row.count.to_string(),
            human_size(row.size),
            match row.reclaim {
                Reclaim::Never => "no",
                Reclaim::Prune => "yes",
                Reclaim::All => "with --all",
            }
            .into(),
        ]);
    }
    print_table(&table);
    let by = |kinds: &[Reclaim]| -> u64 {
        rows.iter()
            .filter(|r| kinds.contains(&r.reclaim))
            .map(|r| r.size)
            .sum()
    };
    println!(
        "Total: {}   Reclaimable: {} (kiln prune), {} (kiln prune --all)",
        human_size(rows.iter().map(|r| r.size).sum()),
        human_size(by(&[Reclaim::Prune])),
        human_size(by(&[Reclaim::Prune, Reclaim::All]))
    );
    Ok(())
}

/// `kiln prune [--all]`.
pub fn prune(state: &StateDir, args: PruneArgs) -> Result<(), Failure> {
    if let Some(builder) = &args.remote.builder {
        let freed = block_on(kiln_api::client::prune(
            builder.clone(),
            args.remote.tls(),
            args.all,
        ))?;
        let total: i64 = freed.iter().map(|r| r.size).sum();
        println!(
            "Total reclaimed space: {}",
            human_size(u64::try_from(total).unwrap_or(0))
        );
        return Ok(());
    }
    super::reap(state);
    let report = store::prune(state, args.all).map_err(|e| Failure::msg(format!("{e:#}")))?;
    match report.entries {
        Some((removed, kept)) => {
            println!("Removed {removed} build cache entries; kept {kept} that named images use")
        }
        None => println!("Removed all build cache"),
    }
    println!("Total reclaimed space: {}", human_size(report.reclaimed));
    Ok(())
}

/// Arguments of `kiln check`.
#[derive(Args)]
pub struct CheckArgs {
    /// Remove damaged blobs and the names of images that lost blobs.
    #[arg(long)]
    repair: bool,
}

/// `kiln check [--repair]`: every stored blob re-read against its digest, every image
/// checked for what it reaches. Damage left in place is a failure.
pub fn check(state: &StateDir, args: CheckArgs) -> Result<(), Failure> {
    let report = store::check(state, args.repair).map_err(Failure::msg)?;
    println!(
        "Checked {} blobs: {} damaged",
        report.blobs,
        report.damaged.len()
    );
    for digest in &report.damaged {
        println!("damaged: {digest}");
    }
    for name in &report.broken_images {
        println!("image {name} reaches a damaged or missing blob");
    }
    if report.damaged.is_empty() && report.broken_images.is_empty() {
        return Ok(());
    }
    if args.repair {
        println!(
            "Removed {} damaged blobs and {} image names; build or pull those images again",
            report.damaged.len(),
            report.broken_images.len()
        );
        Ok(())
    } else {
        Err(Failure::msg(
            "the store is damaged: `kiln check --repair` removes what is damaged",
        ))
    }
}
