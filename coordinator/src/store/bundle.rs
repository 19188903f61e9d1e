//! What a Raft snapshot carries between nodes: the state-machine snapshot plus the bulk data
//! (log chunks) it does not hold, so a node that catches up by snapshot has every log line.

use super::{Batch, Engine, Result, StoreError, Tree};

#[derive(Clone, PartialEq, prost::Message)]
struct Bundle {
    #[prost(uint32, tag = "1")]
    version: u32,
    #[prost(bytes = "vec", tag = "2")]
    state: Vec<u8>,
    #[prost(message, repeated, tag = "3")]
    logs: Vec<Kv>,
}

#[derive(Clone, PartialEq, prost::Message)]
struct Kv {
    #[prost(bytes = "vec", tag = "1")]
    key: Vec<u8>,
    #[prost(bytes = "vec", tag = "2")]
    value: Vec<u8>,
}

const VERSION: u32 = 1;

/// Wraps a state snapshot with every stored log chunk.
pub fn bundle(engine: &dyn Engine, state: &[u8]) -> Result<Vec<u8>> {
    let logs = engine
        .scan(Tree::Logs, &[], None, usize::MAX)?
        .into_iter()
        .map(|(key, value)| Kv { key, value })
        .collect();
    Ok(prost::Message::encode_to_vec(&Bundle {
        version: VERSION,
        state: state.to_vec(),
        logs,
    }))
}

/// Writes the bundle's log chunks into `batch` and returns its state snapshot.
pub fn unbundle(bytes: &[u8], batch: &mut Batch) -> Result<Vec<u8>> {
    let b: Bundle = prost::Message::decode(bytes).map_err(|e| StoreError::Corrupt {
        what: "snapshot bundle".into(),
        message: e.to_string(),
    })?;
    if b.version > VERSION {
        return Err(StoreError::Corrupt {
            what: "snapshot bundle".into(),
            message: format!("version {} is newer than this build ({VERSION})", b.version),
        });
    }
    for kv in b.logs {
        batch.put(Tree::Logs, &kv.key, kv.value);
    }
    Ok(b.state)
}
