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

/// 2: log values in their stored form (`bulk::stored_value`, format byte first); 1: the
/// decoded bytes, as older builds stored and send them.
const VERSION: u32 = 2;

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
        let value = if b.version < 2 {
            super::bulk::stored_value(cd_common::logcodec::RAW, &kv.value)
        } else {
            kv.value
        };
        batch.put(Tree::Logs, &kv.key, value);
    }
    Ok(b.state)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::{MemEngine, chunk_key, read_chunks, stored_value};
    use cd_common::logcodec;

    #[test]
    fn a_bundle_carries_stored_chunks_and_an_older_leaders_decoded_ones_still_install() {
        let text: Vec<u8> = (0..400)
            .flat_map(|i| format!("INFO step {i} done\n").into_bytes())
            .collect();
        let (packed, enc) = logcodec::encode(&text);
        let leader = MemEngine::default();
        let mut b = Batch::default();
        b.put(
            Tree::Logs,
            &chunk_key("r", "s", 1, 0),
            stored_value(enc, &packed),
        );
        leader.write(b).unwrap();
        let sent = bundle(&leader, b"st").unwrap();

        // An older leader's bundle (version 1) holds the decoded bytes.
        let old = prost::Message::encode_to_vec(&Bundle {
            version: 1,
            state: b"st".to_vec(),
            logs: vec![Kv {
                key: chunk_key("r", "s", 1, 1),
                value: b"old line\n".to_vec(),
            }],
        });
        let follower = MemEngine::default();
        for bytes in [sent, old] {
            let mut b = Batch::default();
            assert_eq!(unbundle(&bytes, &mut b).unwrap(), b"st");
            follower.write(b).unwrap();
        }
        let got: Vec<Vec<u8>> = read_chunks(&follower, "r", "s", 1, (1, 0), 10)
            .unwrap()
            .into_iter()
            .map(|r| r.data)
            .collect();
        assert_eq!(got, vec![text, b"old line\n".to_vec()]);
    }
}
