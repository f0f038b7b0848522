//! `sluice teardown`: drop what the pipeline created on the source, its
//! checkpoint in a replica target, and its checkpoint file.

use std::path::Path;

use sluice_core::{CheckpointStore, FileCheckpointStore};

use crate::sources;
use crate::{load, usage, Failure};

pub(crate) async fn cmd_teardown(path: &Path, yes: bool) -> Result<u8, Failure> {
    let cfg = load(path)?;
    if !yes {
        let what = sources::server_state(&cfg);
        return Err(usage(format!(
            "teardown drops {what}the checkpoint in {}; pass --yes to confirm",
            cfg.checkpoint_dir().display()
        )));
    }
    let mut lines = sources::teardown(&cfg).await?;
    lines.extend(crate::sinks::forget(&cfg.sink, &cfg.name).await?);
    for line in lines {
        println!("{line}");
    }
    let mut store = FileCheckpointStore::new(cfg.checkpoint_dir());
    store.clear()?;
    println!("removed checkpoint {}", store.describe());
    Ok(0)
}
