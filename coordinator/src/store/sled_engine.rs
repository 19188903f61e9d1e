//! The sled engine. sled's `flush()` is `sync_file_range`, not fsync (DEPENDENCIES.md), so
//! `sync` follows it with `fdatasync` on sled's data file: entries survive power loss, not just
//! a process crash.

use std::fs::File;
use std::path::Path;

use super::{Batch, Engine, Result, StoreError, Tree};

pub struct SledEngine {
    db: sled::Db,
    /// sled's data file, kept open for `sync_data`.
    data_file: Option<File>,
}

fn io<E: std::fmt::Display>(e: E) -> StoreError {
    StoreError::Io(e.to_string())
}

impl SledEngine {
    pub fn open(dir: &Path) -> Result<Self> {
        std::fs::create_dir_all(dir)
            .map_err(|e| StoreError::Io(format!("{}: {e}", dir.display())))?;
        let db = sled::Config::new()
            .path(dir)
            // Durability is ours (sync below); sled's timer flush only adds I/O.
            .flush_every_ms(None)
            .open()
            .map_err(|e| StoreError::Io(format!("open {}: {e}", dir.display())))?;
        let data_file = File::options().read(true).open(dir.join("db")).ok();
        Ok(SledEngine { db, data_file })
    }
}

impl Engine for SledEngine {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.db.get(tree.key(key)).map_err(io)?.map(|v| v.to_vec()))
    }

    fn scan(
        &self,
        tree: Tree,
        start: &[u8],
        end: Option<&[u8]>,
        limit: usize,
    ) -> Result<Vec<(Vec<u8>, Vec<u8>)>> {
        let lo = tree.key(start);
        let hi = match end {
            Some(e) => tree.key(e),
            None => vec![tree.prefix() + 1],
        };
        let mut out = Vec::new();
        for kv in self.db.range(lo..hi).take(limit) {
            let (k, v) = kv.map_err(io)?;
            out.push((k[1..].to_vec(), v.to_vec()));
        }
        Ok(out)
    }

    fn write(&self, mut batch: Batch) -> Result<()> {
        // sled's `apply_batch` seals and writes its I/O buffer twice (two `pwrite` +
        // `sync_file_range` on its thread pool) to make the batch atomic; one key is atomic
        // without that, and a single log chunk or metadata key is the common write.
        if batch.ops.len() == 1
            && let Some((k, v)) = batch.ops.pop()
        {
            match v {
                Some(v) => self.db.insert(k, v).map_err(io)?,
                None => self.db.remove(k).map_err(io)?,
            };
            return Ok(());
        }
        let mut b = sled::Batch::default();
        for (k, v) in batch.ops {
            match v {
                Some(v) => b.insert(k, v),
                None => b.remove(k),
            }
        }
        self.db.apply_batch(b).map_err(io)
    }

    fn sync(&self) -> Result<()> {
        self.db.flush().map_err(io)?;
        if let Some(f) = &self.data_file {
            f.sync_data().map_err(io)?;
        }
        Ok(())
    }
}
