//! In-memory twin of the sled engine for unit tests of the layers above.

use std::collections::BTreeMap;
use std::sync::Mutex;

use super::{Batch, Engine, Result, Tree};

#[derive(Default)]
pub struct MemEngine {
    map: Mutex<BTreeMap<Vec<u8>, Vec<u8>>>,
}

impl Engine for MemEngine {
    fn get(&self, tree: Tree, key: &[u8]) -> Result<Option<Vec<u8>>> {
        Ok(self.lock().get(&tree.key(key)).cloned())
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
        Ok(self
            .lock()
            .range(lo..hi)
            .take(limit)
            .map(|(k, v)| (k[1..].to_vec(), v.clone()))
            .collect())
    }

    fn write(&self, batch: Batch) -> Result<()> {
        let mut map = self.lock();
        for (k, v) in batch.ops {
            match v {
                Some(v) => map.insert(k, v),
                None => map.remove(&k),
            };
        }
        Ok(())
    }

    fn sync(&self) -> Result<()> {
        Ok(())
    }
}

impl MemEngine {
    fn lock(&self) -> std::sync::MutexGuard<'_, BTreeMap<Vec<u8>, Vec<u8>>> {
        // A panic while holding the lock leaves a consistent map (single-op critical sections).
        self.map.lock().unwrap_or_else(|e| e.into_inner())
    }
}
